"""Erasure requests arriving one by one: unlearning from the target each time against incremental
unlearning (continuing the production adapter), on the built-in world.

    python bench/requests_incremental.py [--incremental-epochs 2] [--json FILE] [--keep]

For each mode, a temporary copy of the project runs the repo's params.yaml with a request ledger
(data.requests: requests): one request per person of the built-in forget set (4 by default), each
`relearn request add`, `dvc add requests`, `dvc repro`, then approval and `relearn promote`. The
gates are reduced to one that always passes, so that every version can be promoted and the next
incremental step can start from it; the numbers are the point, not the verdicts. After each step
it prints the KFR of every request received so far, KRR, LS and the unlearn stage's seconds, and
the wall time from `request add` to a registered (promotable) version.
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
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "relearn-requests-bench"


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def project(work: Path, mode: str, incremental_epochs: int) -> tuple[dict, list]:
    from relearn.data.sources import load_source
    from relearn.params import parse_params
    from relearn.records import save_records

    for name in ("relearn", "pipelines"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["requests"] = "requests"
    params["unlearn"]["init"] = mode
    params["unlearn"]["incremental_epochs"] = incremental_epochs
    params["register"].update(model_name=MODEL, gates={"always": {"metric": "unlearned.krr", "min": 0.0}},
                              request_kfr_min=0.0)
    (work / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (work / ".gitignore").write_text("/requests/\n/incoming/\n", encoding="utf-8")
    p = parse_params(params)
    by_person = defaultdict(list)
    for record in load_source(p.data, p.seed)["forget"]:
        by_person[record.subject].append(record)
    files = []
    for i, (person, records) in enumerate(sorted(by_person.items()), 1):
        path = work / "incoming" / f"person{i}.jsonl"
        save_records(path, records)
        files.append((f"R-{i}", person, path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(work)
    env.update(HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "bench"]):
        run(cmd, work, env)
    return env, files


def approve_and_promote(work: Path, env: dict, version: str) -> None:
    script = ("from mlflow import MlflowClient\n"
              f"MlflowClient().set_model_version_tag('{MODEL}', '{version}', 'approval_status', 'approved')\n")
    run([sys.executable, "-c", script], work, dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db"))
    run([sys.executable, "-m", "relearn.cli", "promote", "--version", version], work, env)


def sequence(mode: str, incremental_epochs: int, keep: bool) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"relearn-requests-{mode}-"))
    env, files = project(work, mode, incremental_epochs)
    rows = []
    for i, (rid, person, path) in enumerate(files):
        start = time.perf_counter()
        run([sys.executable, "-m", "relearn.cli", "request", "add", "--id", rid, "--kind", "privacy",
             "--subject", person, "--retain", "/nonexistent", str(path)], work, env)
        run([str(BIN / "dvc"), "add", "-q", "requests"], work, env)
        log = run([str(BIN / "dvc"), "repro"], work, env)
        seconds = time.perf_counter() - start
        registration = json.loads((work / "reports/registration.json").read_text())
        evaluation = json.loads((work / "reports/evaluation.json").read_text())
        unlearn = json.loads((work / "reports/unlearn.json").read_text())
        u = evaluation["unlearned"]
        row = {"mode": mode, "step": i + 1, "request": rid, "version": registration["version"],
               "kfr_per_request": {k: round(v["kfr"], 3) for k, v in u["requests"].items()},
               "kfr": round(u["kfr"], 3), "krr": round(u["krr"], 3), "ls": round(u["ls"], 4),
               "ls_target": round(evaluation["target"]["ls"], 4), "unlearned_from": unlearn.get("init"),
               "unlearn_seconds": unlearn["train_seconds"], "epochs": unlearn.get("epochs"),
               "add_to_version_seconds": round(seconds, 1),
               "trained_target": "Running stage 'target'" in log}
        rows.append(row)
        print(json.dumps(row), flush=True)
        approve_and_promote(work, env, registration["version"])
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"[requests-bench] kept {work}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    ids = [r["request"] for r in rows if r["mode"] == rows[0]["mode"]]
    head = "| mode | step | from | " + " | ".join(f"KFR {i}" for i in ids) + " | KRR | LS | unlearn s | add to version s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        kfrs = " | ".join(f"{r['kfr_per_request'].get(i, float('nan')):.3f}" if i in r["kfr_per_request"] else "" for i in ids)
        lines.append(f"| {r['mode']} | {r['step']} | {r['unlearned_from']} | {kfrs} | {r['krr']:.3f} | {r['ls']:.3f} | "
                     f"{r['unlearn_seconds']} | {r['add_to_version_seconds']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--incremental-epochs", type=int, default=2,
                    help="unlearn.incremental_epochs of the incremental mode (from-target uses unlearn.epochs).")
    ap.add_argument("--modes", default="target,production")
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--keep", action="store_true", help="Keep the temporary projects.")
    args = ap.parse_args()
    rows = []
    for mode in args.modes.split(","):
        rows += sequence(mode, args.incremental_epochs, args.keep)
    print(table(rows), flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
