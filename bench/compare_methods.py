"""Rerun the method comparison on a chosen data source, in a temporary copy of the project.

    python bench/compare_methods.py [--profile profiles/knowundo.yaml] [--set key=value ...] [--json out.json]

Builds params from the schema defaults, this project's params.yaml and the profile (then --set),
runs `dvc repro` (every stage, the compare@<method> stages included) in a temporary copy, then
`relearn compare`; prints the table and the time it took, and writes the table as JSON (per method:
kfr, krr, ls and the LS parts; per model: forget quality, MIA AUCs and, for the methods in compare.robustness, KFR
per precision rung and probe and the relearning recovery). Relative paths in the profile are taken
from this project's root. Set OMP_NUM_THREADS=1 when other jobs share the CPU.
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
from pathlib import Path

import yaml

from relearn.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def merged(base: dict, override: dict) -> dict:
    from relearn.params import merge_raw

    return merge_raw(base, override)


def apply_sets(params: dict, sets: list[str]) -> None:
    """--set key.path=value (a YAML value) into the nested params, in place."""
    for item in sets:
        key, _, value = item.partition("=")
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = yaml.safe_load(value)


def absolute_paths(params: dict) -> dict:
    data = params["data"]
    if data.get("path"):
        data["path"] = str((ROOT / data["path"]).resolve())
    data["general_files"] = [str((ROOT / f).resolve()) for f in data.get("general_files", [])]
    base = params["model"].get("base")
    if base and (ROOT / base).exists():  # a local model directory or .gguf file (not a hub id)
        params["model"]["base"] = str((ROOT / base).resolve())
    for key in ("embedding_model", "nli_model"):  # local model directories (not hub ids)
        path = params["evaluate"].get(key)
        if path and (ROOT / path).exists():
            params["evaluate"][key] = str((ROOT / path).resolve())
    local = params["augment"]["local"]
    if local.get("model_path"):
        local["model_path"] = str((ROOT / local["model_path"]).resolve())
    for backend in ("local", "endpoint"):  # a rerun reuses this project's augmentation cache
        cache = params["augment"][backend]
        cache["cache_dir"] = str((ROOT / cache["cache_dir"]).resolve())
    return params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "knowundo.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key.path=value (YAML value)")
    ap.add_argument("--json", dest="json_out", default="compare_methods.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project (path is printed)")
    args = ap.parse_args()

    params = merged(Params().to_dict(), yaml.safe_load((ROOT / "params.yaml").read_text()) or {})
    params = merged(params, yaml.safe_load(Path(args.profile).read_text()) or {})
    apply_sets(params, args.sets)
    params = absolute_paths(params)
    parse_params(params, "merged params")  # fail before any work on a bad key

    work = Path(tempfile.mkdtemp(prefix="relearn-compare-"))
    for name in ("relearn", "pipelines"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(PYTHONPATH=str(work), HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    bin_dir = Path(sys.executable).parent
    start = time.monotonic()
    for cmd in (["git", "init", "-q"], [str(bin_dir / "dvc"), "init", "-q"], [str(bin_dir / "dvc"), "repro"],
                [sys.executable, "-m", "relearn.cli", "compare"]):
        subprocess.run(cmd, cwd=work, env=env, check=True)
    seconds = time.monotonic() - start
    table = json.loads((work / "reports" / "compare.json").read_text())
    evidence = json.loads((work / "reports" / "compare_evidence.json").read_text())
    robustness = json.loads((work / "reports" / "robustness.json").read_text())
    evaluation = json.loads((work / "reports" / "evaluation.json").read_text())
    tests = work / "reports" / "compare_tests.json"
    Path(args.json_out).write_text(json.dumps({
        "seconds": round(seconds, 1), "source": params["data"]["source"], "methods": table, "evidence": evidence,
        "robustness_summary": robustness.get("summary"),
        # every model's headline intervals (KFR/KRR/LS, ls_ratio, MIA excess, ...) and MIA AUCs
        "intervals": {name: {"ci": m.get("ci"), "mia": m.get("mia")} for name, m in evaluation.items()},
        "paired_tests": json.loads(tests.read_text()) if tests.is_file() else []}, indent=2))
    print((work / "reports" / "compare.md").read_text())
    plots = Path(args.json_out).resolve().parent
    for png in (work / "plots").glob("compare_*.png"):
        shutil.copy(png, plots / png.name)
    print(f"comparison took {seconds / 60:.1f} min; table written to {args.json_out}; plots compare_*.png in {plots}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
