"""DVC stage `compare@<method>`: unlearn the same target with one method and evaluate it (KFR/KRR/LS,
TOFU metrics, membership inference, the seesaw), and, if compare.robustness lists it, probe it.

    python pipelines/compare.py npo
"""
import dataclasses
import shutil
import sys

from relearn.comparison import forget_side_for, unlearn_params_for
from relearn.data.splits import read_splits
from relearn.data.validate import load_validated
from relearn.errors import UserError, main_guard
from relearn.evaluation.intervals import compact_items, model_intervals
from relearn.evaluation.tofu import forget_quality
from relearn.evidence import model_evidence, robustness_summary, truth_ratios
from relearn.training.checkpoints import clear_checkpoints
from relearn.io import atomic_dir, read_json, write_json
from relearn.modeling.model import load_pretrained
from relearn.params import CHOICES, load_params
from relearn.robustness import probe_with_params
from relearn.training.hardening import negative_triples
from relearn.unlearning import make_adapter


@main_guard
def main() -> None:
    method = sys.argv[1] if len(sys.argv) > 1 else ""
    if method not in CHOICES["unlearn.method"]:
        raise UserError(f"usage: pipelines/compare.py METHOD (one of {', '.join(CHOICES['unlearn.method'])})")
    p = load_params("params.yaml")
    # the pipeline's own run is reused only when it is this adapter's: with distill.enabled the
    # evaluate and robustness stages measured the distilled model
    if method == p.unlearn.method and method not in p.compare.overrides and not p.distill.enabled:
        return reuse_main_run(p, method)
    p = dataclasses.replace(p, unlearn=unlearn_params_for(p, method))
    splits = read_splits("data/splits", ("forget", "retain", "forget_eval", "retain_eval", "holdout", "general"))
    variants = load_validated("data/augmented/forget_variants.jsonl")
    forget_side = forget_side_for(method, splits["forget"], variants, load_validated("data/augmented/general_mix.jsonl", allow_empty=True))
    model, tokenizer, history, train_report = make_adapter(p, "models/target", forget_side, splits["retain"],
                                                           negatives=negative_triples(variants, splits["forget"]),
                                                           checkpoint_stage=f"compare-{method}")
    with atomic_dir(f"models/compare/{method}") as out:
        model.save_pretrained(out)
    reference, _ = load_pretrained("models/base" if p.ppl_model() == "base" else "models/target", p.dtype())
    metrics, items = model_evidence(model, tokenizer, splits, variants, reference, tokenizer, p)
    control_items = read_json("reports/answers.json").get("control", {})
    metrics["tofu"]["forget_quality"] = forget_quality(truth_ratios(items), truth_ratios(control_items))
    model_intervals(metrics, items, p.evaluate.ppl_aggregate, p.seed, p.evaluate.bootstrap_resamples)
    target_seesaw = read_json("reports/evaluation.json")["target"]["seesaw"]
    # per-item verdicts and LS parts (no text): `relearn compare` tests each method against relearn on them
    result = {"method": method, "metrics": metrics, "train": train_report, "per_item": compact_items(items),
              "seesaw": {"target": target_seesaw, "unlearned": metrics["seesaw"]}}
    if method in p.compare.robustness:
        work = f".cache/robustness/compare-{method}"  # the ladder's merged and ONNX copies, removed after
        try:
            probed, _ = probe_with_params(p, "models/target", f"models/compare/{method}", splits, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        control = read_json("reports/robustness.json").get("control", {})
        result["robustness"] = {**probed, "summary": robustness_summary({"unlearned": probed, "control": control})}
    write_json(f"reports/compare/{method}.json", result)
    clear_checkpoints(p.checkpoints(f"compare-{method}")["checkpoint_dir"])
    print(f"[compare] {method}: KFR {metrics['kfr']:.3f}  KRR {metrics['krr']:.3f}  LS {metrics['ls']:.3f}", flush=True)


def reuse_main_run(p, method: str) -> None:
    """The method the pipeline itself ran (unlearn.method, no override) with the same settings: the
    unlearn, evaluate and robustness stages already made its adapter and evidence (training is seeded,
    so a second run would give the same adapter); take them instead of paying for them twice."""
    with atomic_dir(f"models/compare/{method}") as out:
        shutil.copytree("models/adapter", out, dirs_exist_ok=True)
    evaluation = read_json("reports/evaluation.json")
    metrics = evaluation["unlearned"]
    result = {"method": method, "metrics": metrics, "train": read_json("reports/unlearn.json"),
              "per_item": compact_items(read_json("reports/answers.json")["unlearned"]),
              "seesaw": {"target": evaluation["target"]["seesaw"], "unlearned": metrics["seesaw"]},
              "reused": "the unlearn, evaluate and robustness stages' outputs (unlearn.method, same settings)"}
    if method in p.compare.robustness:
        robustness = read_json("reports/robustness.json")
        result["robustness"] = {**robustness["unlearned"], "summary": robustness["summary"]}
    write_json(f"reports/compare/{method}.json", result)
    print(f"[compare] {method}: the pipeline's own run: KFR {metrics['kfr']:.3f}  KRR {metrics['krr']:.3f}  "
          f"LS {metrics['ls']:.3f}", flush=True)


if __name__ == "__main__":
    main()
