"""DVC stage `robustness`: is the knowledge gone or only hidden? The precision ladder (torch fp32/bf16,
ONNX fp32/int8/int4), paraphrased, misspelt and jailbreak questions and the relearning attack's
sweep on the unlearned model (its probes through the output guard as well), beside the target's and
the retain-only control's (the robustness_references stage's; the control's attack is what the
relearning excess is read against).

reports/robustness.json holds each model's aggregates and the `summary` the gates read;
reports/robustness_items.json the per-item results (forget-set text: stays local).
"""
import shutil
from pathlib import Path

from relearn.data.splits import read_splits
from relearn.evaluation.intervals import robustness_intervals
from relearn.errors import main_guard
from relearn.evidence import robustness_summary
from relearn.io import read_json, write_json
from relearn.params import load_params
from relearn.robustness import probe_with_params
from relearn.serving.guard import version_guard
from layout import unlearned_model


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits = read_splits("data/splits", ("forget", "forget_eval", "retain", "retain_eval", "general"))
    # the output guard the register stage attaches (same facts; its own key): probes through it too
    guard = version_guard(splits["forget"] + splits["forget_eval"], ledger_dir=p.data.requests, keep=splits["retain"])
    report = read_json("reports/references/robustness.json")  # the target and the control
    items = read_json("reports/references/robustness_items.json")
    work = Path(".cache/robustness")  # the ladder's merged and ONNX copies, removed after
    try:
        base, adapter = unlearned_model(p)  # target + adapter, or the distilled model
        report["unlearned"], items["unlearned"] = probe_with_params(p, base, adapter, splits, work, guard=guard)
        print(f"[robustness] unlearned: {report['unlearned']['seconds']['total']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["summary"] = robustness_summary(report)
    print("[robustness] " + ", ".join(f"{k} {v:.3f}" for k, v in report["summary"].items() if v is not None), flush=True)
    # the 95% interval and n of every rate, drop, recovery and excess (summary.ci: the gated ones)
    robustness_intervals(report, items, seed=p.seed, resamples=p.evaluate.bootstrap_resamples)
    write_json("reports/robustness.json", report)
    write_json("reports/robustness_items.json", items)


if __name__ == "__main__":
    main()
