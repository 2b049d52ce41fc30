"""DVC stage `compare@<method>`: unlearn the same target with one method and evaluate it.

    python pipelines/compare.py npo
"""
import dataclasses
import sys

from relearn.comparison import forget_side_for, probability_histogram, unlearn_params_for
from relearn.data.splits import read_splits
from relearn.data.validate import load_validated
from relearn.errors import UserError, main_guard
from relearn.evaluation.evaluate import evaluate_model
from relearn.generation import answer_token_logprobs
from relearn.io import atomic_dir, write_json
from relearn.model import load_pretrained
from relearn.params import CHOICES, load_params
from relearn.unlearning import make_adapter


@main_guard
def main() -> None:
    method = sys.argv[1] if len(sys.argv) > 1 else ""
    if method not in CHOICES["unlearn.method"]:
        raise UserError(f"usage: pipelines/compare.py METHOD (one of {', '.join(CHOICES['unlearn.method'])})")
    p = load_params("params.yaml")
    p = dataclasses.replace(p, unlearn=unlearn_params_for(p, method))
    splits = read_splits("data/splits", ("forget", "retain", "forget_eval", "retain_eval"))
    variants = load_validated("data/augmented/forget_variants.jsonl")
    forget_side = forget_side_for(method, splits["forget"], variants, load_validated("data/augmented/general_mix.jsonl"))
    model, tokenizer, history, train_report = make_adapter(p, "models/target", forget_side, splits["retain"])
    with atomic_dir(f"models/compare/{method}") as out:
        model.save_pretrained(out)
    target, _ = load_pretrained("models/target", p.model.dtype)
    metrics, _ = evaluate_model(model, tokenizer, splits["forget_eval"], splits["retain_eval"], variants, target,
                                tokenizer, p)
    # the seesaw: how likely each model finds the original forget answers, token by token
    questions, answers = [r.question for r in splits["forget"]], [r.answer for r in splits["forget"]]
    args = (tokenizer, questions, answers, p.model.prompt_template, p.model.max_length, p.evaluate.batch_size)
    seesaw = {"target": probability_histogram(answer_token_logprobs(target, *args)),
              "unlearned": probability_histogram(answer_token_logprobs(model, *args))}
    write_json(f"reports/compare/{method}.json", {"method": method, "metrics": metrics, "train": train_report,
                                                  "seesaw": seesaw})
    print(f"[compare] {method}: KFR {metrics['kfr']:.3f}  KRR {metrics['krr']:.3f}  LS {metrics['ls']:.3f}", flush=True)


if __name__ == "__main__":
    main()
