"""DVC stage `robustness`: is the knowledge gone or only hidden? The precision ladder (torch fp32/bf16,
ONNX fp32/int8/int4), paraphrased, misspelt and jailbreak questions, and the relearning attack, on
the target, the retain-only control and the unlearned model.

reports/robustness.json holds each model's aggregates and the `summary` the gates read;
reports/robustness_items.json the per-item results (forget-set text: stays local).
"""
import shutil
import tempfile

from relearn.data.splits import read_splits
from relearn.errors import main_guard
from relearn.evidence import robustness_summary
from relearn.io import write_json
from relearn.params import load_params
from relearn.robustness import load_jailbreaks, probe_model


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    r = p.robustness
    splits = read_splits("data/splits", ("forget", "forget_eval", "retain_eval"))
    jailbreaks = load_jailbreaks(r.jailbreaks) if r.jailbreaks else None
    parts = ["ladder"] * bool(r.ladder) + ["probes"] * bool(r.probes) + ["relearning"] * bool(r.relearn_steps)
    models = {"target": ("models/target", None), "control": ("models/control", None),
              "unlearned": ("models/target", "models/adapter")}
    report, items = {}, {}
    work = tempfile.mkdtemp(prefix="relearn-robustness-")  # ONNX exports of the ladder, removed after
    try:
        for name, (base, adapter) in models.items():
            report[name], items[name] = probe_model(
                base, adapter, forget_eval=splits["forget_eval"], retain_eval=splits["retain_eval"],
                forget=splits["forget"], template=p.model.prompt_template, max_new_tokens=p.evaluate.max_new_tokens,
                batch_size=p.evaluate.batch_size, parts=parts, work_dir=f"{work}/{name}", rungs=r.ladder,
                int4_block_size=r.int4_block_size, probes=r.probes, jailbreaks=jailbreaks,
                relearn_steps=r.relearn_steps, relearn_lr=r.relearn_lr, relearn_fraction=r.relearn_fraction,
                max_length=p.model.max_length, seed=p.seed)
            shutil.rmtree(f"{work}/{name}", ignore_errors=True)
            print(f"[robustness] {name}: {report[name]['seconds']['total']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["summary"] = robustness_summary(report)
    write_json("reports/robustness.json", report)
    write_json("reports/robustness_items.json", items)
    print("[robustness] " + ", ".join(f"{k} {v:.3f}" for k, v in report["summary"].items() if v is not None), flush=True)


if __name__ == "__main__":
    main()
