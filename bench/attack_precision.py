"""Is the bounded-memory relearning attacker as strong as the fp32 one?

    python bench/attack_precision.py [--workspace DIR] [--precisions float32,bfloat16] [--attacker full]
                                     [--set key=value ...] [--threads 1] [--json FILE]

robustness.relearn_precision bfloat16 keeps the attacker's weights, gradients and AdamW moments in
bf16 (relearn.training.optim.BF16AdamW, half the memory). An attacker that learns less would report less
recovery and let a model through the relearning gate that a real attacker would break, so this runs
the relearning attack of the workspace's params.yaml (what `make demo` or `dvc repro` left: the
unlearned model of pipelines/layout.py, models/control, data/splits) once per precision on the
unlearned model and on the control, and prints, setting by setting, the recovery and the excess over
the control in each precision, with the worst case and the wall time of each attack.

--set key=value overrides params (robustness.relearn_folds=2, robustness.relearn_lrs=[...]).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "pipelines"))

from compare_methods import apply_sets  # noqa: E402


def attack(p, model: tuple[str, str | None], splits: dict, precision: str, attacker: str) -> tuple[dict, float]:
    from relearn.robustness import relearning_attack

    r = p.robustness
    start = time.monotonic()
    aggregate, _ = relearning_attack(
        model[0], model[1], splits["forget"], splits["forget_eval"], template=p.model.prompt,
        max_new_tokens=p.evaluate.max_new_tokens, max_length=p.model.max_length, steps=r.relearn_steps,
        lrs=r.relearn_lrs, attacker=attacker, lora_r=r.relearn_lora_r, folds=r.relearn_folds,
        fraction=r.relearn_fraction, seed=p.seed, retain_eval=splits["retain_eval"],
        eval_batch_size=p.evaluate.batch_size, device=p.device, dtype=p.dtype(), precision=precision)
    return aggregate, time.monotonic() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default=".", help="a project directory after `dvc repro` (default: here)")
    ap.add_argument("--precisions", default="float32,bfloat16")
    ap.add_argument("--attacker", choices=("full", "lora"), default=None, help="default: robustness.relearn_attacker")
    ap.add_argument("--models", default="unlearned,control",
                    help="unlearned,control (default) or unlearned alone: recovery without the excess, half the time")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    workspace = Path(args.workspace).resolve()
    os.chdir(workspace)
    from layout import unlearned_model

    from relearn.data.splits import read_splits
    from relearn.params import parse_params

    raw = yaml.safe_load(Path("params.yaml").read_text())
    apply_sets(raw, args.set)
    p = parse_params(raw, "params.yaml + --set")
    attacker = args.attacker or p.robustness.relearn_attacker
    splits = read_splits("data/splits", ("forget", "forget_eval", "retain_eval"))
    models = {"unlearned": unlearned_model(p), "control": ("models/control", None)}
    models = {name: models[name] for name in args.models.split(",")}
    control = "control" in models
    runs: dict = {}
    for precision in args.precisions.split(","):
        for name, model in models.items():
            aggregate, seconds = attack(p, model, splits, precision, attacker)
            runs[f"{name}/{precision}"] = {"settings": aggregate["settings"], "worst": aggregate["worst"],
                                           "memory": aggregate["memory"], "seconds": round(seconds, 1)}
    table = []
    print(f"\n{attacker} attacker; recovery of the unlearned model" + (" (excess over the control)" if control else "")
          + " per precision")
    print(f"{'lr':>8} {'steps':>5} | " + " | ".join(f"{pr:>22}" for pr in args.precisions.split(",")))
    for i, setting in enumerate(runs[f"unlearned/{args.precisions.split(',')[0]}"]["settings"]):
        row = {"lr": setting["lr"], "steps": setting["steps"]}
        cells = []
        for precision in args.precisions.split(","):
            u = runs[f"unlearned/{precision}"]["settings"][i]["recovery"]
            if control:
                c = runs[f"control/{precision}"]["settings"][i]["recovery"]
                row[precision] = {"recovery": u, "control": c, "excess": u - c}
                cells.append(f"{u:>7.3f} ({u - c:+.3f})      ")
            else:
                row[precision] = {"recovery": u}
                cells.append(f"{u:>7.3f}")
        table.append(row)
        print(f"{setting['lr']:>8g} {setting['steps']:>5} | " + " | ".join(f"{c:>22}" for c in cells))
    worst = "excess" if control else "recovery"
    result = {"attacker": attacker, "workspace": str(workspace), "table": table,
              f"worst_{worst}": {pr: max(r[pr][worst] for r in table) for pr in args.precisions.split(",")},
              "seconds": {k: v["seconds"] for k, v in runs.items()}, "runs": runs}
    for precision, value in result[f"worst_{worst}"].items():
        print(f"{precision}: worst-case {worst} {value:+.3f}; attack seconds "
              + ", ".join(f"{name} {runs[f'{name}/{precision}']['seconds']}" for name in models))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
