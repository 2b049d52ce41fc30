"""DVC stage `evaluate`: KFR, KRR, LS, ROUGE, TOFU metrics, membership inference and the seesaw for
the unlearned model, beside the target's and the retain-only control's (the evaluate_references
stage's), with the 95% intervals of all three and of the differences between them."""
from relearn.training.devices import finish, is_main_process
from relearn.errors import main_guard
from relearn.evaluation.intervals import model_intervals, paired_intervals
from relearn.evidence import add_forget_quality, headline_metrics, model_evidence
from relearn.io import read_json, write_json
from relearn.ledger.core import request_kfr
from relearn.modeling.model import load_pretrained, load_with_adapter
from relearn.params import load_params
from layout import evaluation_inputs, unlearned_model


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits, variants, device = evaluation_inputs(p)
    # the target and the control, as the evaluate_references stage measured them
    metrics = read_json("reports/references/evaluation.json")
    items = read_json("reports/references/answers.json")
    model, tokenizer = load_with_adapter(*unlearned_model(p), p.dtype(), device)  # or the distilled one
    # LS's reference LM (evaluate.ppl_model): the pretrained base, or the target itself; PPL is
    # measured under the same one for all three
    reference = load_pretrained("models/base" if p.ppl_model() == "base" else "models/target", p.dtype(), device)[0]
    metrics["unlearned"], items["unlearned"] = model_evidence(model, tokenizer, splits, variants, reference, tokenizer, p)
    for name, m in metrics.items():
        print(f"[evaluate] {name}: KFR {m['kfr']:.3f}  KRR {m['krr']:.3f}  LS {m['ls']:.3f}  "
              f"MIA LOSS AUC {m['mia']['loss_auc']}", flush=True)
    add_forget_quality(metrics, items)
    manifest = read_json("data/splits/requests.json")
    if manifest["requests"]:  # erasure requests (data.requests): KFR of each request's questions
        for name in metrics:
            metrics[name]["requests"] = request_kfr(manifest, items[name]["forget"])
        print("[evaluate] unlearned KFR per request: " + ", ".join(
            f"{rid} {r['kfr']:.3f}" for rid, r in metrics["unlearned"]["requests"].items()), flush=True)
    # a 95% interval and the item count beside every number (Wilson for rates, a seeded bootstrap
    # over items for the rest; numbers read against another model resample the same items for both)
    interval_kw = dict(ppl_aggregate=p.evaluate.ppl_aggregate, seed=p.seed, resamples=p.evaluate.bootstrap_resamples)
    for name in metrics:
        model_intervals(metrics[name], items[name], **interval_kw)
    paired_intervals(metrics, items, **interval_kw)
    if not is_main_process():  # every process has every result; the main one writes them
        return finish()
    write_json("reports/evaluation.json", metrics)  # every aggregate: set parts, LS parts, ROUGE, TOFU, MIA
    # the headline DVC metrics, so that `dvc metrics show` puts the models side by side
    write_json("metrics.json", headline_metrics(metrics))
    write_json("reports/answers.json", items)  # per-item evidence; contains forget-set text, stays local
    finish()


if __name__ == "__main__":
    main()
