"""ReLearn next to the reverse-optimisation baselines: per-method settings, forget data, table, plots.

Every method unlearns the same target. ReLearn trains on the augmented forget set (vague answers);
the baselines (GA, GD, GA+KLR, NPO, NPO+GD, NPO+KLR) push down the ORIGINAL forget answers.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from relearn.methods import REVERSE_METHODS
from relearn.params import Params, UnlearnParams
from relearn.records import QARecord
from relearn.robustness.ladder import RUNGS

SEESAW_BINS = 20


def unlearn_params_for(params: Params, method: str) -> UnlearnParams:
    """params.unlearn with the method set and compare.overrides[method] applied."""
    return dataclasses.replace(params.unlearn, method=method, **params.compare.overrides.get(method, {}))


def forget_side_for(method: str, forget: list[QARecord], augmented: list[QARecord],
                    general_mix: list[QARecord]) -> list[QARecord]:
    """What a method trains on as its forget side."""
    return list(forget) if method in REVERSE_METHODS else list(augmented) + list(general_mix)


def probability_histogram(token_logprobs: list[list[float]], bins: int = SEESAW_BINS) -> list[float]:
    """Share of answer tokens whose probability falls in each of `bins` equal bins of [0, 1]."""
    counts = [0] * bins
    for row in token_logprobs:
        for lp in row:
            counts[min(int(math.exp(lp) * bins), bins - 1)] += 1
    total = sum(counts) or 1
    return [c / total for c in counts]


def table_rows(target: dict, results: dict[str, dict]) -> list[dict]:
    """One row per model (target first): KFR, KRR, LS with their 95% intervals ([low, high]) and
    item counts where the evaluation computed them, and the forget-set LS parts."""
    def row(name: str, m: dict) -> dict:
        f = m["forget"]
        out = {"method": name}
        for key in ("kfr", "krr", "ls"):
            ci = (m.get("ci") or {}).get(key) or {}
            out[key] = m[key]
            out[f"{key} 95% CI"] = [ci["low"], ci["high"]] if ci.get("low") is not None else None
        out["n forget/retain"] = "/".join(str((m.get("ci") or {}).get(k, {}).get("n", "-")) for k in ("kfr", "krr"))
        out.update({"ls_forget": f["ls"], "ls_retain": m["retain"]["ls"], "ppl_forget": f["ppl"],
                    "brunet_forget": f["brunet"], "honore_forget": f["honore"], "rougeL_forget": f["rougeL_recall"]})
        return out
    return [row("target", target)] + [row(method, results[method]["metrics"]) for method in sorted(results)]


def paired_tests(results: dict[str, dict], reference: str = "relearn", ppl_aggregate: str = "mean", seed: int = 0,
                 resamples: int = 1000) -> list[dict]:
    """Each method against `reference` on the same items (the compare results' `per_item`):
    McNemar's exact test on the KFR and KRR verdicts, and a paired bootstrap of the LS difference
    (method - reference; forget and retain items resampled, each jointly for both methods). A
    method without per-item evidence (results from before intervals) is skipped."""
    from relearn.evaluation import uncertainty as u
    from relearn.evaluation.intervals import SETS, model_ls

    base = (results.get(reference) or {}).get("per_item")
    if not base:
        return []
    out = []
    for method, result in sorted(results.items()):
        mine = result.get("per_item")
        if method == reference or not mine:
            continue
        row: dict = {"method": method, "reference": reference}
        ids = {}
        for name, (rate, label) in SETS.items():
            ids[name] = [i for i in base[name] if i in mine[name] and label in base[name][i] and label in mine[name][i]]
            a = [bool(mine[name][i][label]) for i in ids[name]]
            b = [bool(base[name][i][label]) for i in ids[name]]
            test = u.mcnemar(a, b)
            test["difference"] = (sum(a) - sum(b)) / len(a) if a else None
            row[rate] = test
        (mf, mr), (rf, rr) = model_ls(mine, ppl_aggregate, ids), model_ls(base, ppl_aggregate, ids)
        row["ls"] = u.paired_bootstrap([len(ids["forget"]), len(ids["retain"])],
                                       lambda i, j, mf=mf, mr=mr, rf=rf, rr=rr: (mf(i) + mr(j)) / 2 - (rf(i) + rr(j)) / 2,
                                       seed, resamples)
        row["ls"]["difference"] = row["ls"]["value"]
        row["summary"] = _in_words(row)
        out.append(row)
    return out


def _in_words(row: dict) -> str:
    """'npo vs relearn: KFR +0.125 (p 0.25, not significant); ...'"""
    from relearn.evaluation.uncertainty import ALPHA

    parts = []
    for key in ("kfr", "krr", "ls"):
        test = row[key]
        diff, p = test.get("difference"), test.get("p_value")
        if diff is None or p is None:
            parts.append(f"{key.upper()}: not testable")
            continue
        words = "significant" if p < ALPHA else "not significant: the items cannot tell them apart"
        parts.append(f"{key.upper()} {diff:+.3f} (p {_p(test, '= ')}, {words})")
    return f"{row['method']} vs {row['reference']}: " + "; ".join(parts)


def _p(test: dict, eq: str = "") -> str:
    """A test's p-value for people. A bootstrap's smallest p is one resample in its number of resamples
    (a p of 0 means below that: "< 0.005" for 200); an exact test's is given down to 0.001."""
    p = test.get("p_value")
    if p is None:
        return "-"
    floor = 1 / test["resamples"] if test.get("resamples") else 0.001
    return f"< {floor:.2g}" if p < floor else f"{eq}{p:.3g}"


def paired_markdown(tests: list[dict]) -> str:
    """The paired tests as a table, differences as method minus the reference."""
    from relearn.evaluation import uncertainty as u

    if not tests:
        return ""
    lines = [f"Paired tests against {tests[0]['reference']} on the same items (McNemar for KFR/KRR, paired "
             f"bootstrap for LS; p < 0.05 is called significant):", "",
             "| method | ΔKFR | p | ΔKRR | p | ΔLS [95% CI] | p | verdict |", "|---|---|---|---|---|---|---|---|"]

    def cell(test: dict) -> tuple[str, str]:
        diff = test.get("difference")
        text = "-" if diff is None else f"{diff:+.3f}"
        if test.get("low") is not None:
            text += f" [{test['low']:+.3f}, {test['high']:+.3f}]"
        return text, _p(test)

    for t in tests:
        cells = [c for key in ("kfr", "krr", "ls") for c in cell(t[key])]
        significant = [k.upper() for k in ("kfr", "krr", "ls") if u.significant(t[k])]
        verdict = ("differs in " + ", ".join(significant)) if significant else "no significant difference"
        lines.append(f"| {t['method']} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines) + "\n"


def _dig(tree, *path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def evidence_rows(evaluation: dict, robustness: dict | None, results: dict[str, dict]) -> list[dict]:
    """One row per model (target, control, then each method): TOFU forget quality, MIA AUCs and,
    where probes ran, KFR at each precision rung and under the question probes, and the
    relearning attack's recovery."""
    def row(name: str, metrics: dict, probed: dict | None) -> dict:
        out = {"model": name, "forget_quality": _dig(metrics, "tofu", "forget_quality", "p_value"),
               "mia_loss_auc": _dig(metrics, "mia", "loss_auc"), "mia_mink_auc": _dig(metrics, "mia", "mink_auc")}
        rungs = _dig(probed, "ladder", "rungs") or {}
        for rung in sorted(rungs, key=lambda r: RUNGS.index(r) if r in RUNGS else len(RUNGS)):  # fp32 first
            out[f"kfr {rung}"] = rungs[rung].get("kfr")
        for probe in ("paraphrase", "perturb"):
            out[f"kfr {probe}"] = _dig(probed, "probes", "probes", probe, "kfr")
        out["kfr jailbreak min"] = _dig(probed, "probes", "jailbreak_min_kfr", "kfr")
        out["relearning recovery"] = _dig(probed, "relearning", "recovery")
        return out
    rows = [row(name, evaluation[name], (robustness or {}).get(name)) for name in ("target", "control") if name in evaluation]
    rows += [row(method, r["metrics"], r.get("robustness")) for method, r in sorted(results.items())]
    return rows


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, float) for x in v):
            return f"[{v[0]:.2f}, {v[1]:.2f}]"
        return "-" if v is None else str(v)

    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def load_results(directory: str | Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(Path(directory).glob("*.json"))}


def plot_comparison(rows: list[dict], results: dict[str, dict], out_dir: str | Path) -> list[Path]:
    """KFR vs KRR, LS parts per method, and the seesaw plot (forget-answer token probabilities)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(5, 4))
    for r in rows:
        ax.scatter(r["krr"], r["kfr"])
        ax.annotate(r["method"], (r["krr"], r["kfr"]), textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="KRR (retained)", ylabel="KFR (forgotten)", xlim=(-0.05, 1.05), ylim=(-0.05, 1.05),
           title="Forgetting vs retention")
    written.append(out_dir / "compare_kfr_krr.png")
    fig.tight_layout(), fig.savefig(written[-1], dpi=100), plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    names, width = [r["method"] for r in rows], 0.25
    for i, key in enumerate(("ls_forget", "ls_retain", "ls")):
        ax.bar([x + (i - 1) * width for x in range(len(rows))], [r[key] for r in rows], width, label=key)
    ax.set_xticks(range(len(rows)), names, rotation=30)
    ax.set(ylabel="linguistic score", title="LS per method")
    ax.legend()
    written.append(out_dir / "compare_ls.png")
    fig.tight_layout(), fig.savefig(written[-1], dpi=100), plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    centers = [(i + 0.5) / SEESAW_BINS for i in range(SEESAW_BINS)]
    first = next(iter(results.values()), None)
    if first:
        ax.plot(centers, first["seesaw"]["target"], "k--", label="target")
    for method, result in sorted(results.items()):
        ax.plot(centers, result["seesaw"]["unlearned"], label=method)
    ax.set(xlabel="probability of the forget answer's token", ylabel="share of tokens",
           title="Seesaw: forget-answer token probabilities")
    ax.legend()
    written.append(out_dir / "compare_seesaw.png")
    fig.tight_layout(), fig.savefig(written[-1], dpi=100), plt.close(fig)
    return written
