"""Which hardening options make forgetting survive relearning, and what do they cost?

    python bench/durability.py [--workspace DIR | --profile FILE] [--configs relearn,dpo,...] [--jobs 2]
                               [--set key=value ...] [--json durability.json]

Runs ReLearn with each option of unlearn.harden and the distill stage, alone and in combinations,
on the same target: the workspace's models/target and models/control, data/splits and
data/augmented (what `make demo` or `dvc repro` left there) and its params.yaml (then --set); or,
with --profile (e.g. profiles/smollm2-knowundo.yaml), a temporary copy of the project with that
profile over params.yaml, where `dvc repro evaluate` first trains the target and the control. For
each configuration it trains the adapter (and the distilled student), measures KFR, KRR, LS,
membership inference and the forget-set truth ratio (relearn.evidence.model_evidence), and runs the
relearning attack of robustness.* (relearn.robustness.relearning_attack) on it. The control gets
the same attack once; the worst-case excess is read setting by setting against it.

Each row: kfr, krr, ls, ls_ratio (LS / the target's), relearning_excess (worst over the attack
settings of recovery minus the control's), relearning_recovery, mia_auc (forget vs holdout, the
control's alongside), truth_ratio (forget set; the control's alongside), train_seconds (unlearning
plus distillation) and time_ratio (to plain ReLearn's, measured under the same --jobs), and whether
the aims are met (KFR >= 0.9, KRR >= 0.9, ls_ratio >= 0.75, excess <= 0.25).

--jobs N runs N configurations at once, one thread each (OMP_NUM_THREADS=1): on 2 cores, --jobs 2
takes about half the time, and every timing is under that same load.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from compare_methods import absolute_paths, apply_sets, merged  # noqa: E402

H = "harden"
CONFIGS: dict[str, dict] = {
    "relearn": {},
    "sam": {"unlearn": {H: {"sam_rho": 0.05}}},
    "dpo": {"unlearn": {H: {"negative": "dpo", "negative_weight": 1.0, "negative_beta": 0.5}}},
    "simnpo": {"unlearn": {H: {"negative": "simnpo", "negative_weight": 0.5, "negative_beta": 1.0}}},
    "mask+norm": {"unlearn": {H: {"mask": True, "normalise": True}}},
    "rank256": {"unlearn": {"lora": {"r": 256, "alpha": 256}}},
    "distill": {"distill": {"enabled": True}},
    "distill-a0.8": {"distill": {"enabled": True, "alpha": 0.8}},
    "distill-a0.9": {"distill": {"enabled": True, "alpha": 0.9}},
    "simnpo-w2": {"unlearn": {H: {"negative": "simnpo", "negative_weight": 2.0, "negative_beta": 1.0}}},
    "simnpo+mask+norm+sam": {"unlearn": {H: {"negative": "simnpo", "negative_weight": 0.5, "negative_beta": 1.0,
                                             "mask": True, "normalise": True, "sam_rho": 0.05}}},
    "simnpo+distill-a0.8": {"unlearn": {H: {"negative": "simnpo", "negative_weight": 0.5, "negative_beta": 1.0}},
                            "distill": {"enabled": True, "alpha": 0.8}},
}
AIMS = {"kfr": (">=", 0.9), "krr": (">=", 0.9), "ls_ratio": (">=", 0.75), "relearning_excess": ("<=", 0.25)}


def config_params(base: dict, name: str):
    from relearn.params import parse_params

    raw = merged(base, CONFIGS[name]) if name != "control" else dict(base)
    raw["checkpoint_every"] = 0  # configurations train side by side: no shared checkpoint directory
    return parse_params(raw, f"{name} params")


def run_one(name: str, base: dict, out: Path) -> None:
    """One configuration (or 'control': the control's attack) in this process; writes its JSON row."""
    from relearn.io import write_json
    from relearn.data.splits import read_splits
    from relearn.data.validate import load_validated
    from relearn.evidence import model_evidence
    from relearn.modeling.model import load_pretrained, load_with_adapter
    from relearn.robustness import relearning_attack

    p = config_params(base, name)
    splits = read_splits("data/splits", ("forget", "forget_eval", "retain", "retain_eval", "holdout", "general"))
    r = p.robustness
    attack = dict(template=p.model.prompt, max_new_tokens=p.evaluate.max_new_tokens, max_length=p.model.max_length,
                  steps=r.relearn_steps, lrs=r.relearn_lrs, folds=r.relearn_folds, fraction=r.relearn_fraction,
                  attacker=r.relearn_attacker, lora_r=r.relearn_lora_r,
                  precision=p.attack_precision(), seed=p.seed,
                  retain_eval=splits["retain_eval"], eval_batch_size=p.evaluate.batch_size, dtype=p.dtype())
    if name == "control":
        start = time.monotonic()
        agg, _ = relearning_attack("models/control", None, splits["forget"], splits["forget_eval"], **attack)
        write_json(out, {"relearning": agg, "attack_seconds": round(time.monotonic() - start, 1)})
        return
    from relearn.comparison import forget_side_for
    from relearn.training.hardening import negative_triples
    from relearn.unlearning import make_adapter

    variants = load_validated("data/augmented/forget_variants.jsonl")
    side = forget_side_for(p.unlearn.method, splits["forget"], variants,
                           load_validated("data/augmented/general_mix.jsonl", allow_empty=True))
    row: dict = {"name": name, "overrides": CONFIGS[name]}
    with tempfile.TemporaryDirectory(prefix=f"durability-{name}-") as tmp:
        model, tokenizer, _, report = make_adapter(p, "models/target", side, splits["retain"],
                                                   negatives=negative_triples(variants, splits["forget"]))
        model.save_pretrained(f"{tmp}/adapter")
        row["unlearn_seconds"] = report["train_seconds"]
        base_dir, adapter_dir = "models/target", f"{tmp}/adapter"
        row["distill_seconds"] = 0.0
        if p.distill.enabled:
            from relearn.distill import distill, distillation_pairs, shrink_and_perturb
            from relearn.robustness.common import load_merged

            teacher = model.merge_and_unload()
            student, _ = load_merged("models/target", adapter_dir if p.distill.init == "unlearned" else None)
            shrink_and_perturb(student, p.distill.alpha, p.seed)
            student, _, d_report = distill(teacher, student, tokenizer,
                                           distillation_pairs(p.distill.sets, splits, variants), p)
            student.save_pretrained(f"{tmp}/distilled")
            tokenizer.save_pretrained(f"{tmp}/distilled")
            row["distill_seconds"] = d_report["train_seconds"]
            base_dir, adapter_dir = f"{tmp}/distilled", None
            del teacher, student
        del model
        row["train_seconds"] = round(row["unlearn_seconds"] + row["distill_seconds"], 1)
        if os.environ.get("DURABILITY_TRAIN_ONLY") == "1":  # --train-only: the cost alone
            write_json(out, row)
            return
        unlearned, _ = load_with_adapter(base_dir, adapter_dir, p.dtype())
        reference = load_pretrained("models/base" if p.ppl_model() == "base" else "models/target", p.dtype())[0]
        metrics, _ = model_evidence(unlearned, tokenizer, splits, variants, reference, tokenizer, p)
        del unlearned, reference
        row.update(kfr=metrics["kfr"], krr=metrics["krr"], ls=metrics["ls"], mia_auc=metrics["mia"]["loss_auc"],
                   truth_ratio=metrics["tofu"]["forget"].get("truth_ratio"))
        start = time.monotonic()
        row["relearning"], _ = relearning_attack(base_dir, adapter_dir, splits["forget"], splits["forget_eval"], **attack)
        row["attack_seconds"] = round(time.monotonic() - start, 1)
    write_json(out, row)  # atomic: a killed job leaves no half a result for --results-dir to reuse


def prepare_workspace(profile: Path, sets: list[str]) -> Path:
    """A temporary copy of the project with `profile` over params.yaml (and --set), after
    `dvc repro evaluate`: the target, the control, the splits, the augmented set and their evaluation."""
    from relearn.params import Params, parse_params

    params = merged(Params().to_dict(), yaml.safe_load((ROOT / "params.yaml").read_text()) or {})
    params = absolute_paths(merged(params, yaml.safe_load(profile.read_text()) or {}))
    params["compare"].update(methods=[], robustness=[])
    apply_sets(params, sets)
    parse_params(params, "merged params")
    work = Path(tempfile.mkdtemp(prefix="durability-workspace-"))
    for name in ("relearn", "pipelines"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(work), HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    dvc = str(Path(sys.executable).parent / "dvc")
    start = time.monotonic()
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "repro", "evaluate"]):
        subprocess.run(cmd, cwd=work, env=env, check=True)
    print(f"[durability] workspace {work} ready in {(time.monotonic() - start) / 60:.1f} min", flush=True)
    return work


def finish(rows: dict[str, dict], control: dict, evaluation: dict) -> list[dict]:
    """Rows with the control-relative numbers, the time ratio and the aims."""
    from relearn.evidence import robustness_summary

    plain = rows.get("relearn", {}).get("train_seconds")
    out = []
    for row in rows.values():
        if "relearning" not in row:  # --train-only
            out.append({**row, "time_ratio": row["train_seconds"] / plain if plain else None})
            continue
        summary = robustness_summary({"unlearned": {"relearning": row["relearning"]}, "control": {"relearning": control}})
        target_ls = evaluation.get("target", {}).get("ls")
        done = {**{k: v for k, v in row.items() if k != "relearning"},
                "ls_ratio": row["ls"] / target_ls if target_ls else None,
                "relearning_excess": summary["relearning_excess"], "relearning_recovery": summary["relearning_recovery"],
                "worst": row["relearning"].get("worst"),
                "mia_auc_control": evaluation.get("control", {}).get("mia", {}).get("loss_auc"),
                "truth_ratio_control": evaluation.get("control", {}).get("tofu", {}).get("forget", {}).get("truth_ratio"),
                "time_ratio": row["train_seconds"] / plain if plain else None}
        done["meets_aims"] = all(done.get(k) is not None and (done[k] >= v if op == ">=" else done[k] <= v)
                                 for k, (op, v) in AIMS.items())
        out.append(done)
    return out


def table(rows: list[dict]) -> str:
    cols = [("config", "name", "{}"), ("KFR", "kfr", "{:.3f}"), ("KRR", "krr", "{:.3f}"), ("LS", "ls", "{:.3f}"),
            ("LS ratio", "ls_ratio", "{:.2f}"), ("relearn excess", "relearning_excess", "{:+.3f}"),
            ("MIA AUC", "mia_auc", "{:.3f}"), ("ctl MIA", "mia_auc_control", "{:.3f}"),
            ("truth ratio", "truth_ratio", "{:.3f}"), ("ctl TR", "truth_ratio_control", "{:.3f}"),
            ("train s", "train_seconds", "{:.0f}"), ("time x", "time_ratio", "{:.2f}"), ("aims", "meets_aims", "{}")]
    cell = lambda fmt, v: "—" if v is None else fmt.format(v)  # noqa: E731
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(fmt, r.get(key)) for _, key, fmt in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default=str(ROOT), help="a project directory after `dvc repro` (default: this one)")
    ap.add_argument("--profile", help="build a temporary workspace from this profile (see the module docstring)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    ap.add_argument("--jobs", type=int, default=1, help="configurations run at once (one thread each when > 1)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key.path=value (YAML value), over params.yaml")
    ap.add_argument("--json", dest="json_out", default="durability.json")
    ap.add_argument("--train-only", action="store_true",
                    help="train each configuration and report its time only (no evaluation, no attack): run it on an "
                         "idle machine with --jobs 1 for clean cost ratios, e.g. with --set unlearn.epochs=1")
    ap.add_argument("--results-dir", help="keep each configuration's result here; one already there is reused "
                                          "(a second run with more configurations pays only for the new ones)")
    ap.add_argument("--run-one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile and not args.run_one:
        args.workspace = str(prepare_workspace(Path(args.profile), args.sets))
    workspace = Path(args.workspace).resolve()
    os.chdir(workspace)
    from relearn.params import Params

    base = merged(Params().to_dict(), yaml.safe_load(Path("params.yaml").read_text()) or {})
    apply_sets(base, args.sets)
    if args.run_one:
        return run_one(args.run_one, base, Path(args.out))
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}")
    for name in names:
        config_params(base, name)  # a bad override fails here, before an hour of work
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), DURABILITY_TRAIN_ONLY="1" if args.train_only else "0")
    if args.jobs > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out_dir = Path(args.results_dir) if args.results_dir else Path(tempfile.mkdtemp(prefix="durability-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def launch(name: str) -> dict:
        out = out_dir / f"{name}.json"
        if out.exists():
            print(f"[durability] {name}: reusing {out}", flush=True)
            return json.loads(out.read_text())
        cmd = [sys.executable, str(Path(__file__).resolve()), "--workspace", str(workspace), "--run-one", name,
               "--out", str(out)] + [x for s in args.sets for x in ("--set", s)]
        with open(out_dir / f"{name}.log", "w") as log:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc:
            print(f"[durability] {name} failed (exit {rc}); log: {out_dir / (name + '.log')}", flush=True)
            return {}
        result = json.loads(out.read_text())
        print(f"[durability] {name} done at {(time.monotonic() - start) / 60:.1f} min", flush=True)
        return result

    first = [] if args.train_only else ["control"]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        results = dict(zip(first + names, pool.map(launch, first + names)))
    control = results.pop("control", {})
    rows = finish({n: r for n, r in results.items() if r}, control.get("relearning", {}),
                  json.loads(Path("reports/evaluation.json").read_text()))
    seconds = time.monotonic() - start
    report = {"seconds": round(seconds, 1), "jobs": args.jobs, "workspace": str(workspace), "sets": args.sets,
              "control_relearning": control.get("relearning"), "rows": rows, "aims": AIMS}
    Path(args.json_out).write_text(json.dumps(report, indent=2))
    print(table(rows))
    print(f"durability took {seconds / 60:.1f} min with --jobs {args.jobs}; written to {args.json_out}; logs in {out_dir}")


if __name__ == "__main__":
    main()
