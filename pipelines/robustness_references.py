"""DVC stage `robustness_references`: the robustness probes of the target and the retain-only control,
which the unlearned model's numbers are read against (the precision ladder and the question probes on
both; the relearning attack's sweep on the control only: no gate reads the target's). A stage of its
own so that an experiment on the unlearning settings probes only the new unlearned model; the
robustness stage adds it and computes the summary the gates read.

reports/references/robustness.json: each model's aggregates; reports/references/robustness_items.json:
the per-item results (forget-set text: stays local).
"""
import shutil
from pathlib import Path

from relearn.data.splits import read_splits
from relearn.errors import main_guard
from relearn.io import write_json
from relearn.params import load_params
from relearn.robustness import probe_with_params


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits = read_splits("data/splits", ("forget", "forget_eval", "retain", "retain_eval"))
    report, items = {}, {}
    work = Path(".cache/robustness-references")  # the ladder's merged and ONNX copies, removed after
    try:
        for name in ("target", "control"):
            skip = ("relearning",) if name == "target" else ()
            report[name], items[name] = probe_with_params(p, f"models/{name}", None, splits, work / name, skip=skip)
            shutil.rmtree(work / name, ignore_errors=True)
            print(f"[robustness] {name}: {report[name]['seconds']['total']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json("reports/references/robustness.json", report)
    write_json("reports/references/robustness_items.json", items)


if __name__ == "__main__":
    main()
