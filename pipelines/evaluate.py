"""DVC stage `evaluate`: KFR, KRR, LS and ROUGE for the target and the unlearned model."""
from relearn.data.splits import read_splits
from relearn.data.validate import load_validated
from relearn.errors import main_guard
from relearn.evaluation.evaluate import evaluate_model
from relearn.io import write_json
from relearn.model import load_pretrained, load_with_adapter
from relearn.params import load_params


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits = read_splits("data/splits", ("forget_eval", "retain_eval"))
    variants = load_validated("data/augmented/forget_variants.jsonl")
    target, tokenizer = load_pretrained("models/target", p.model.dtype)
    unlearned, _ = load_with_adapter("models/target", "models/adapter", p.model.dtype)
    metrics, items = {}, {}
    for name, model in (("target", target), ("unlearned", unlearned)):
        # PPL is measured under the target model for both (the spec's reference model)
        metrics[name], items[name] = evaluate_model(model, tokenizer, splits["forget_eval"], splits["retain_eval"],
                                                    variants, target, tokenizer, p)
        m = metrics[name]
        print(f"[evaluate] {name}: KFR {m['kfr']:.3f}  KRR {m['krr']:.3f}  LS {m['ls']:.3f}", flush=True)
    write_json("reports/evaluation.json", metrics)  # every number: set parts, LS parts, ROUGE, per variant
    # the headline DVC metrics, so that `dvc metrics show` puts the two models side by side
    write_json("metrics.json", {name: {k: m[k] for k in ("kfr", "krr", "ls")} for name, m in metrics.items()})
    write_json("reports/answers.json", items)  # per-item evidence; contains forget-set text, stays local


if __name__ == "__main__":
    main()
