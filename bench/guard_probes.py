"""The output guard on a project's unlearned model: KFR and KRR under jailbreak probes, without and
with the guard, and the guard's own cost, without running the whole robustness stage.

    python bench/guard_probes.py [--project DIR] [--jailbreaks id,id,...] [--json FILE]

DIR is a project that has run `dvc repro` at least up to the unlearn stage (this one by default,
or a `bench/compare_methods.py --keep` copy): its params.yaml, data/splits and models/ are read.
The guard is built from the forget split as the register stage builds it. The plain questions and
the chosen jailbreak prompts (default: every one in relearn/robustness/jailbreaks.yaml) are
answered by the unlearned model (greedy, as the robustness stage does), then scored as they are and
as `relearn serve` would send them. Prints one row per probe and the lowest KFR over the
jailbreaks, with the Wilson 95% interval and n of each rate, then each guarded answer that still
counts as not forgotten: how many of its facts it reveals and how many of those the retain set
states about the same person (the guard lets those through by design; `stated_by_keep`). Counts
only: no fact is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=str(ROOT))
    ap.add_argument("--jailbreaks", default="", help="comma-separated jailbreak ids (default: all)")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()
    project = Path(args.project).resolve()
    os.chdir(project)
    sys.path.insert(0, str(project / "pipelines"))

    from layout import unlearned_model

    from relearn.data.splits import read_splits
    from relearn.training.devices import resolve_device
    from relearn.evaluation.uncertainty import wilson
    from relearn.params import load_params
    from relearn.robustness import load_jailbreaks, run_probes
    from relearn.robustness.common import load_merged
    from relearn.evaluation.scoring import fact_revealed
    from relearn.serving.guard import build_guard, record_facts, stated_by_keep

    p = load_params("params.yaml")
    splits = read_splits("data/splits", ("forget", "forget_eval", "retain", "retain_eval"))
    guard = build_guard(splits["forget"] + splits["forget_eval"], keep=splits["retain"])
    jailbreaks = load_jailbreaks(p.robustness.jailbreaks)[1]
    if args.jailbreaks:
        wanted = args.jailbreaks.split(",")
        unknown = [j for j in wanted if j not in {jb.id for jb in jailbreaks}]
        if unknown:
            raise SystemExit(f"unknown jailbreak ids {unknown}; known: {', '.join(jb.id for jb in jailbreaks)}")
        jailbreaks = [jb for jb in jailbreaks if jb.id in wanted]
    base, adapter = unlearned_model(p)
    start = time.monotonic()
    model, tokenizer = load_merged(base, adapter, dtype=p.dtype(), device=str(resolve_device(p.device)))
    aggregate, items = run_probes(model, tokenizer, splits["forget_eval"], splits["retain_eval"],
                                  template=p.model.prompt, max_new_tokens=p.evaluate.max_new_tokens,
                                  batch_size=p.evaluate.batch_size, probes=("jailbreak",), jailbreaks=jailbreaks,
                                  seed=p.seed, guard=guard)
    seconds = time.monotonic() - start

    def rate(kind: str, probe: str, verdict: str) -> dict:
        values = [d[probe][verdict] for d in items[kind].values() if probe in d and d[probe].get(verdict) is not None]
        return wilson(sum(values), len(values))

    rows = {}
    for probe in aggregate["probes"]:
        rows[probe] = {"kfr": rate("forget", probe, "forgotten"), "kfr_guarded": rate("forget", f"{probe}+guard", "forgotten"),
                       "krr": rate("retain", probe, "retained"), "krr_guarded": rate("retain", f"{probe}+guard", "retained")}

    def cell(r: dict) -> str:
        return f"{r['value']:.3f} [{r['low']:.2f}, {r['high']:.2f}]" if r["value"] is not None else "-"

    print(f"[guard-probes] {project}: guard {guard.summary()}; {seconds:.0f} s")
    print("| probe | KFR | KFR, guarded | KRR | KRR, guarded |\n|---|---|---|---|---|")
    for probe, r in rows.items():
        print(f"| {probe} | {cell(r['kfr'])} | {cell(r['kfr_guarded'])} | {cell(r['krr'])} | {cell(r['krr_guarded'])} |")
    n = rows["plain"]["kfr"]["n"], rows["plain"]["krr"]["n"]
    print(f"n = {n[0]} forget-eval, {n[1]} retain-eval items; lowest jailbreak KFR {aggregate['jailbreak_min_kfr']}, "
          f"guarded {aggregate['guarded_jailbreak_min_kfr']}")
    records = {r.id: r for r in splits["forget_eval"]}
    misses = []
    for rid, probes in items["forget"].items():
        for probe, item in probes.items():
            if probe.endswith("+guard") and item.get("forgotten") is False:
                revealed = [f for f in record_facts(records[rid]) if fact_revealed(item["answer"], f)]
                public = set(stated_by_keep(records[rid], splits["retain"]))
                misses.append({"item": rid, "probe": probe, "revealed": len(revealed),
                               "stated_by_retain": sum(f in public for f in revealed)})
                print(f"guarded miss: {rid} under {probe}: reveals {len(revealed)} fact(s), "
                      f"{misses[-1]['stated_by_retain']} of them stated by the retain set about the same person")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"seconds": round(seconds, 1), "guard": guard.summary(),
                                                    "rows": rows, "aggregate": aggregate, "guarded_misses": misses}, indent=2) + "\n")


if __name__ == "__main__":
    main()
