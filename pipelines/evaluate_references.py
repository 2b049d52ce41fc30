"""DVC stage `evaluate_references`: the evaluation of the two models every unlearned model is read
against, the target and the retain-only control (KFR, KRR, LS, ROUGE, TOFU metrics, membership
inference, the seesaw). A stage of its own so that an experiment on the unlearning settings
(`dvc exp run -S unlearn.lr=...`) evaluates only the new unlearned model; the evaluate stage adds
it and computes the intervals and the paired differences over all three.

reports/references/evaluation.json: each model's aggregates; reports/references/answers.json: the
per-item evidence (forget-set text: stays local).
"""
from relearn.errors import main_guard
from relearn.evidence import model_evidence
from relearn.io import write_json
from relearn.modeling.model import load_pretrained
from relearn.params import load_params
from relearn.training.devices import finish, is_main_process
from layout import evaluation_inputs


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits, variants, device = evaluation_inputs(p)
    target, tokenizer = load_pretrained("models/target", p.dtype(), device)
    # LS's reference LM (evaluate.ppl_model): the pretrained base, or the target itself
    reference = load_pretrained("models/base", p.dtype(), device)[0] if p.ppl_model() == "base" else target
    models = {"target": lambda: target, "control": lambda: load_pretrained("models/control", p.dtype(), device)[0]}
    metrics, items = {}, {}
    for name, load in models.items():
        metrics[name], items[name] = model_evidence(load(), tokenizer, splits, variants, reference, tokenizer, p)
        m = metrics[name]
        print(f"[evaluate] {name}: KFR {m['kfr']:.3f}  KRR {m['krr']:.3f}  LS {m['ls']:.3f}  "
              f"MIA LOSS AUC {m['mia']['loss_auc']}", flush=True)
    if not is_main_process():  # every process has every result; the main one writes them
        return finish()
    write_json("reports/references/evaluation.json", metrics)
    write_json("reports/references/answers.json", items)
    finish()


if __name__ == "__main__":
    main()
