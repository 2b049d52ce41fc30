"""Sweep the reverse-optimisation baselines (learning rate, epochs) on one project's target, for the
paper's comparison at equal forgetting: does ReLearn keep more KRR and LS at the KFR a baseline needs?

    python bench/sweep_methods.py --workdir DIR --method ga npo gd --lr 3e-4 1e-3 3e-3 [--epochs 1 2]
                                  [--json sweep.json] [--plot sweep.png]
    python bench/sweep_methods.py --workdir DIR --kept     # the table and plot of every point kept so far

DIR is a DVC project of this repository that has run `dvc repro` through the evaluate and robustness
stages on the settings to compare (this project, or the copy `bench/compare_methods.py --profile ...
--keep` leaves behind: target, control and ReLearn are then reused, not retrained). Each point of the
grid is the project's own `compare@<method>` stage, run by `dvc repro --single-item` with
compare.overrides.<method> set to that learning rate and number of epochs: the same training and the
same evaluation (KFR, KRR, LS with their 95% intervals) as `relearn compare`. Each point's report is
kept as DIR/reports/sweep/<method>-lr<lr>-e<epochs>.json; a rerun skips the points it already has.
DIR/params.yaml is put back as it was at the end (also after a failure or Ctrl-C).

Prints one row per point and ReLearn's own row (reports/evaluation.json), and for each method the
point whose KFR is nearest ReLearn's, whether that KFR lies in ReLearn's interval, and that point
tested against ReLearn on the same items (McNemar on the KFR and KRR verdicts, a paired bootstrap of
LS, as `relearn compare` does); writes the rows as JSON and plots KRR and LS against KFR (one line
per method, ReLearn as a point with its intervals).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent


def point_name(method: str, lr: float, epochs: int) -> str:
    return f"{method}-lr{lr:g}-e{epochs}"


def row_of(name: str, metrics: dict, **extra) -> dict:
    ci = metrics.get("ci") or {}
    row = {"name": name, **extra}
    for key in ("kfr", "krr", "ls", "ls_ratio"):
        if key in metrics or "value" in ci.get(key, {}):  # ls_ratio: the interval's value
            row[key] = metrics.get(key, ci.get(key, {}).get("value"))
        if key in ci:
            row[f"{key}_ci"] = [ci[key].get("low"), ci[key].get("high")]
            row[f"{key}_n"] = ci[key].get("n")
    return row


def run_point(workdir: Path, original: dict, method: str, lr: float, epochs: int, env: dict) -> dict:
    params = json.loads(json.dumps(original))  # a deep copy
    compare = params.setdefault("compare", {})
    compare["methods"] = sorted(set(compare.get("methods") or []) | {method})
    compare.setdefault("overrides", {})[method] = {**(compare.get("overrides") or {}).get(method, {}),
                                                   "lr": lr, "epochs": epochs}
    compare["robustness"] = [m for m in compare.get("robustness") or [] if m != method]
    write_atomic(workdir / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    start = time.monotonic()
    subprocess.run([str(BIN / "dvc"), "repro", "--single-item", "--force", f"compare@{method}"],
                   cwd=workdir, env=env, check=True)
    result = json.loads((workdir / "reports" / "compare" / f"{method}.json").read_text())
    result["sweep"] = {"method": method, "lr": lr, "epochs": epochs, "seconds": round(time.monotonic() - start, 1)}
    return result


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def nearest(rows: list[dict], reference: dict) -> dict[str, dict]:
    """Per method, the point whose KFR is nearest ReLearn's, and whether it lies in ReLearn's interval."""
    out = {}
    low, high = reference.get("kfr_ci", [None, None])
    for method in sorted({r["method"] for r in rows}):
        best = min((r for r in rows if r["method"] == method), key=lambda r: abs(r["kfr"] - reference["kfr"]))
        out[method] = {"point": best["name"], "kfr": best["kfr"], "krr": best["krr"], "ls": best.get("ls"),
                       "kfr_in_relearn_interval": low is not None and low <= best["kfr"] <= high}
    return out


def matched_tests(workdir: Path, matched: dict[str, dict], params: dict) -> list[dict]:
    """Each method's point nearest ReLearn's KFR against ReLearn, item by item (relearn.comparison.paired_tests)."""
    from relearn.comparison import paired_tests
    from relearn.evaluation.intervals import compact_items

    answers = json.loads((workdir / "reports" / "answers.json").read_text())
    results = {"relearn": {"per_item": compact_items(answers["unlearned"])}}
    for method, m in matched.items():
        results[method] = json.loads((workdir / "reports" / "sweep" / f"{m['point']}.json").read_text())
    evaluate = params.get("evaluate", {})
    return paired_tests(results, "relearn", evaluate.get("ppl_aggregate", "mean"), params.get("seed", 0),
                        evaluate.get("bootstrap_resamples", 1000))


def table(rows: list[dict]) -> str:
    def cell(row, key):
        if key not in row:
            return "-"
        low, high = row.get(f"{key}_ci", [None, None])
        return f"{row[key]:.3f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else "")

    lines = ["| point | KFR [95%] | KRR [95%] | LS [95%] | n forget/retain | min |", "|---|---|---|---|---|---|"]
    for r in rows:
        minutes = f"{r['seconds'] / 60:.1f}" if r.get("seconds") else "-"
        lines.append(f"| {r['name']} | {cell(r, 'kfr')} | {cell(r, 'krr')} | {cell(r, 'ls')} | "
                     f"{r.get('kfr_n', '-')}/{r.get('krr_n', '-')} | {minutes} |")
    return "\n".join(lines)


def plot(rows: list[dict], reference: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "krr", "KRR"), (axes[1], "ls", "LS")):
        for method in sorted({r["method"] for r in rows}):
            points = sorted((r for r in rows if r["method"] == method and key in r), key=lambda r: r["kfr"])
            ax.plot([r["kfr"] for r in points], [r[key] for r in points], marker="o", label=method)
        if key in reference:
            xerr = [[reference["kfr"] - reference["kfr_ci"][0]], [reference["kfr_ci"][1] - reference["kfr"]]] \
                if reference.get("kfr_ci") else None
            yerr = [[reference[key] - reference[f"{key}_ci"][0]], [reference[f"{key}_ci"][1] - reference[key]]] \
                if reference.get(f"{key}_ci") else None
            ax.errorbar([reference["kfr"]], [reference[key]], xerr=xerr, yerr=yerr, fmt="*", markersize=14,
                        color="black", label="relearn")
        ax.set_xlabel("KFR")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("baselines swept (lr, epochs) against ReLearn, same target and items")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--method", nargs="+", default=["ga", "npo", "gd"])
    ap.add_argument("--lr", nargs="+", type=float, default=[])
    ap.add_argument("--kept", action="store_true", help="train nothing: every point already under reports/sweep")
    ap.add_argument("--epochs", nargs="+", type=int, default=None, help="default: the project's unlearn.epochs")
    ap.add_argument("--json", dest="json_out", type=Path, default=Path("sweep_methods.json"))
    ap.add_argument("--plot", type=Path, default=Path("sweep_methods.png"))
    args = ap.parse_args()

    workdir = args.workdir.resolve()
    evaluation_path = workdir / "reports" / "evaluation.json"
    if not (workdir / "dvc.yaml").is_file() or not evaluation_path.is_file():
        sys.exit(f"{workdir}: not a project that has run the evaluate stage (dvc.yaml and reports/evaluation.json)")
    text = (workdir / "params.yaml").read_text()
    original = yaml.safe_load(text)
    epochs = args.epochs or [original.get("unlearn", {}).get("epochs", 1)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    keep = workdir / "reports" / "sweep"
    keep.mkdir(parents=True, exist_ok=True)
    if not args.kept and not args.lr:
        sys.exit("--lr: at least one learning rate (or --kept for the points already swept)")

    def kept_row(path: Path) -> dict:
        result = json.loads(path.read_text())
        point = result["sweep"]
        return row_of(path.stem, result["metrics"], method=point["method"], lr=point["lr"], epochs=point["epochs"],
                      seconds=point["seconds"])

    grid = [] if args.kept else [(method, lr, n) for method in args.method for lr in args.lr for n in epochs]
    rows = [kept_row(path) for path in sorted(keep.glob("*.json"), key=lambda f: f.stem)] if args.kept else []
    try:
        for method, lr, n in grid:
            name = point_name(method, lr, n)
            path = keep / f"{name}.json"
            if not path.is_file():
                print(f"[sweep] {name} ...", flush=True)
                write_atomic(path, json.dumps(run_point(workdir, original, method, lr, n, env), indent=1))
            rows.append(kept_row(path))
            print(f"[sweep] {name}: KFR {rows[-1]['kfr']:.3f} KRR {rows[-1]['krr']:.3f} "
                  f"LS {rows[-1]['ls']:.3f} ({rows[-1]['seconds'] / 60:.1f} min)", flush=True)
    finally:
        write_atomic(workdir / "params.yaml", text)

    relearn = row_of("relearn (the pipeline's)", json.loads(evaluation_path.read_text())["unlearned"], method="relearn")
    print(table([relearn, *rows]))
    matched = nearest(rows, relearn)
    for method, m in matched.items():
        verdict = "within" if m["kfr_in_relearn_interval"] else "outside"
        print(f"{method}: nearest ReLearn's KFR is {m['point']} (KFR {m['kfr']:.3f}, {verdict} ReLearn's interval): "
              f"KRR {m['krr']:.3f} against ReLearn's {relearn['krr']:.3f}")
    tests = matched_tests(workdir, matched, original)
    for test in tests:
        print(test["summary"].replace(f"{test['method']} vs", f"{matched[test['method']]['point']} vs"))
    write_atomic(args.json_out, json.dumps({"relearn": relearn, "points": rows, "nearest": matched,
                                            "paired_tests": tests}, indent=1))
    plot(rows, relearn, args.plot)
    print(f"rows written to {args.json_out}, plot to {args.plot}")


if __name__ == "__main__":
    main()
