"""The output guard on a project's unlearned model: KFR and KRR under jailbreak probes, without and
with the guard, and the guard's own cost, without running the whole robustness stage.

    python bench/guard_probes.py [--project DIR] [--jailbreaks id,id,...] [--json FILE]
    python bench/guard_probes.py [--project DIR] --answers reports/robustness_items.json [--json FILE]

DIR is a project that has run `dvc repro` at least up to the unlearn stage (this one by default,
or a `bench/compare_methods.py --keep` copy): its params.yaml, data/splits and models/ are read.
The guard is built from the forget split as the register stage builds it. The plain questions and
the chosen jailbreak prompts (default: every one in relearn/robustness/jailbreaks.yaml) are
answered by the unlearned model (greedy, as the robustness stage does), then scored as they are and
as `relearn serve` would send them. Prints one row per probe and the lowest KFR over the
jailbreaks, with the Wilson 95% interval and n of each rate, then each guarded answer that still
counts as not forgotten: how many of its facts it reveals and how many of those the retain set
states about the same person (the guard holds those only where their forget question is asked;
`stated_by_keep`). Counts only: no fact is printed.

With --answers, nothing is generated: the unlearned model's answers that the robustness stage kept
(its per-item file, every probe it ran) are passed through a guard built by this checkout's code, in
seconds. That is how a change to the guard is measured on a whole profile's probes without running
the model again (the answers are the same; only what the guard makes of them changes).
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
    ap.add_argument("--answers", default=None,
                    help="the robustness stage's per-item file: rescore its answers, generate nothing")
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
    from relearn.serving.guard import record_facts, stated_by_keep, version_guard

    p = load_params("params.yaml")
    splits = read_splits("data/splits", ("forget", "forget_eval", "retain", "retain_eval", "general"))
    # the guard as the register and robustness stages build it (purged requests' guards carried)
    guard = version_guard(splits["forget"] + splits["forget_eval"], ledger_dir=p.data.requests, keep=splits["retain"])
    jailbreaks = load_jailbreaks(p.robustness.jailbreaks)[1]
    if args.jailbreaks:
        wanted = args.jailbreaks.split(",")
        unknown = [j for j in wanted if j not in {jb.id for jb in jailbreaks}]
        if unknown:
            raise SystemExit(f"unknown jailbreak ids {unknown}; known: {', '.join(jb.id for jb in jailbreaks)}")
        jailbreaks = [jb for jb in jailbreaks if jb.id in wanted]
    start = time.monotonic()
    if args.answers:
        aggregate, items = rescore(Path(args.answers), splits, guard,
                                   only={f"jailbreak:{jb.id}" for jb in jailbreaks} if args.jailbreaks else None)
    else:
        base, adapter = unlearned_model(p)
        model, tokenizer = load_merged(base, adapter, dtype=p.dtype(), device=str(resolve_device(p.device)))
        aggregate, items = run_probes(model, tokenizer, splits["forget_eval"], splits["retain_eval"],
                                      template=p.model.prompt, max_new_tokens=p.evaluate.max_new_tokens,
                                      batch_size=p.evaluate.batch_size, probes=("jailbreak",),
                                      jailbreaks=jailbreaks, seed=p.seed, guard=guard, general=splits["general"])
    seconds = time.monotonic() - start

    def rate(kind: str, probe: str, verdict: str) -> dict:
        values = [d[probe][verdict] for d in items[kind].values() if probe in d and d[probe].get(verdict) is not None]
        return wilson(sum(values), len(values))

    def touched(probe: str) -> int:
        """Retain answers the guard changed at all (a redaction that left the item retained counts too)."""
        return sum(d[f"{probe}+guard"]["answer"] != d[probe]["answer"]
                   for d in items["retain"].values() if probe in d and f"{probe}+guard" in d)

    rows = {}
    for probe in aggregate["probes"]:
        rows[probe] = {"kfr": rate("forget", probe, "forgotten"), "kfr_guarded": rate("forget", f"{probe}+guard", "forgotten"),
                       "krr": rate("retain", probe, "retained"), "krr_guarded": rate("retain", f"{probe}+guard", "retained"),
                       "retain_touched": touched(probe)}

    def cell(r: dict) -> str:
        return f"{r['value']:.3f} [{r['low']:.2f}, {r['high']:.2f}]" if r["value"] is not None else "-"

    print(f"[guard-probes] {project}: guard {guard.summary()}; {seconds:.0f} s")
    print("| probe | KFR | KFR, guarded | KRR | KRR, guarded | retain answers changed |\n|---|---|---|---|---|---|")
    for probe, r in rows.items():
        print(f"| {probe} | {cell(r['kfr'])} | {cell(r['kfr_guarded'])} | {cell(r['krr'])} | {cell(r['krr_guarded'])} "
              f"| {r['retain_touched']} of {r['krr']['n']} |")
    general = [d for d in items.get("general", {}).values() if "plain" in d and "plain+guard" in d]
    if general:
        rows["plain"]["general"] = {"krr": rate("general", "plain", "retained"),
                                    "krr_guarded": rate("general", "plain+guard", "retained"),
                                    "touched": sum(d["plain"]["answer"] != d["plain+guard"]["answer"] for d in general)}
        g = rows["plain"]["general"]
        print(f"general set, plain questions: KRR {cell(g['krr'])}, guarded {cell(g['krr_guarded'])}; "
              f"{g['touched']} of {len(general)} answers changed")
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


def rescore(path: Path, splits: dict, guard, only: set[str] | None = None) -> tuple[dict, dict]:
    """(aggregate, per-item) as run_probes returns them, from the unlearned model's kept answers (the plain
    questions and, when `only` names jailbreak probes, those; else every probe kept)."""
    from relearn.robustness.probes import through_guard

    try:
        kept = json.loads(path.read_text(encoding="utf-8"))["unlearned"]["probes"]
        if not all(isinstance(kept.get(kind), dict) for kind in ("forget", "retain")):
            raise KeyError("no per-item forget and retain answers")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: not a robustness stage per-item file with the unlearned model's probes ({exc})") from None
    sets = {"forget": splits["forget_eval"], "retain": splits["retain_eval"]}
    items = {kind: {r.id: {} for r in records} for kind, records in sets.items()}
    if kept.get("general"):  # the general set's plain answers (the guard's cost beyond the retain set)
        general = [r for r in splits["general"] if "plain" in kept["general"].get(r.id, {})]
        answered = {r.id: kept["general"][r.id]["plain"] for r in general}
        _, guarded = through_guard(guard, general, answered, "retain")
        items["general"] = {rid: {"plain": answered[rid], "plain+guard": guarded[rid]} for rid in answered}
    probes: dict[str, dict] = {}
    for kind, records in sets.items():
        names = sorted({n for rid in kept[kind] for n in kept[kind][rid] if not n.endswith("+guard")
                        and (only is None or n == "plain" or n in only)})
        for name in names:
            answered = {r.id: kept[kind][r.id][name] for r in records if name in kept[kind].get(r.id, {})}
            scored = [r for r in records if r.id in answered]
            verdict = "forgotten" if kind == "forget" else "retained"
            plain = [answered[r.id][verdict] for r in scored if answered[r.id].get(verdict) is not None]
            rate, guarded = through_guard(guard, scored, answered, kind)
            block = probes.setdefault(name, {"guarded": {}})
            block["kfr" if kind == "forget" else "krr"] = sum(plain) / len(plain) if plain else float("nan")
            block["guarded"]["kfr" if kind == "forget" else "krr"] = rate
            for rid in answered:
                items[kind][rid][name] = answered[rid]
                items[kind][rid][f"{name}+guard"] = guarded[rid]
    jailbroken = [n for n in probes if n.startswith("jailbreak:")]
    lowest = (lambda key: min(jailbroken, key=lambda n: key(probes[n]))) if jailbroken else None
    aggregate = {"probes": probes,
                 "jailbreak_min_kfr": ({"probe": (n := lowest(lambda b: b["kfr"])), "kfr": probes[n]["kfr"]}
                                       if lowest else None),
                 "guarded_jailbreak_min_kfr": ({"probe": (g := lowest(lambda b: b["guarded"]["kfr"])),
                                                "kfr": probes[g]["guarded"]["kfr"]} if lowest else None)}
    return aggregate, items


if __name__ == "__main__":
    main()
