"""Which interval each evaluation number gets, from the per-item evidence the evaluation kept.

    model_intervals   one model: KFR, KRR (overall, per set, per question variant), LS and ROUGE of
                      each set, the model's LS, MIA AUCs, TOFU truth ratio and ROUGE-L
    paired_intervals  numbers read against another model, with the items resampled jointly:
                      `ls_ratio` (unlearned / target LS), `mia_auc_excess` (unlearned - control
                      LOSS AUC), `truth_ratio_vs_control`, and each model's forget quality (KS
                      test of its truth ratios against the control's)
    verdicts          per-item verdicts (the share of rounds when evaluate.rounds > 1)

Each interval sits in a `ci` mapping beside its value (relearn.evaluation.uncertainty). With
evaluate.rounds > 1 a rate's interval is a bootstrap over the items' per-round shares; LS, ROUGE and
the rest are resampled from the first round's answers (the rounds' mean is the point value).
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Mapping

from relearn.evaluation import uncertainty as u
from relearn.evaluation.linguistic import aggregate_ppl, brunet_index, honore_statistic, ls_from_means, word_tokens
from relearn.evaluation.mia import auc

SETS = {"forget": ("kfr", "forgotten"), "retain": ("krr", "retained")}
# derived metric (relearn.registry.gates.derived) -> the per-item MIA score it is read from
MIA_EXCESS = {"mia_auc_excess": "loss", "mia_name_masked_auc_excess": "name_masked_loss"}


def verdicts(per_item: Mapping[str, Mapping], label: str) -> dict[str, float]:
    """{id: 1.0 / 0.0}, or the share of rounds when the item carries `<label>_rounds`; unscored items left out."""
    out = {}
    for rid, item in per_item.items():
        if f"{label}_rounds" in item:
            out[rid] = statistics.fmean(float(v) for v in item[f"{label}_rounds"])
        elif label in item:
            out[rid] = float(item[label])
    return out


class SetLS:
    """LS of one set from its items' parts (PPL, Brunet's W, Honore's H), for any resample of them."""

    def __init__(self, per_item: Mapping[str, Mapping], ids: list[str], ppl_aggregate: str = "mean"):
        self.ppl_aggregate = ppl_aggregate
        self.ppl = [math.inf if per_item[i]["ppl"] is None or math.isnan(per_item[i]["ppl"]) else per_item[i]["ppl"]
                    for i in ids]
        self.w, self.h = [], []
        for i in ids:  # the answer's W and H, or the values `compact_items` kept without the text
            w, h = _parts(per_item[i])
            self.w.append(w)
            self.h.append(h)

    def __call__(self, idx) -> float:
        idx = list(idx)
        return ls_from_means(aggregate_ppl([self.ppl[i] for i in idx], self.ppl_aggregate),
                             statistics.fmean(self.w[i] for i in idx), statistics.fmean(self.h[i] for i in idx))["ls"]


def _parts(item: Mapping) -> tuple[float, float]:
    if "brunet" in item and "honore" in item:
        return item["brunet"], item["honore"]
    tokens = word_tokens(item["answer"])
    return brunet_index(tokens), honore_statistic(tokens)


def compact_items(items: Mapping[str, Mapping]) -> dict:
    """The per-item numbers a paired test between methods needs, without any text (a method's
    compare result is a report, not a place for forget-set answers): for the forget and retain
    sets, each item's verdict and LS parts."""
    out = {}
    for name, (_, label) in SETS.items():
        out[name] = {}
        for rid, item in (items.get(name) or {}).items():
            row = {"ppl": item.get("ppl")}
            row["brunet"], row["honore"] = _parts(item)
            if label in item:
                row[label] = item[label]
            if f"{label}_rounds" in item:
                row[f"{label}_rounds"] = item[f"{label}_rounds"]
            out[name][rid] = row
    return out


def model_ls(items: Mapping[str, Mapping], ppl_aggregate: str = "mean", ids: Mapping[str, list] | None = None):
    """(the forget set's SetLS, the retain set's) over `ids` (default: every item)."""
    return tuple(SetLS(items[s], list(ids[s]) if ids else list(items[s]), ppl_aggregate) for s in SETS)


def _mean_of(values: list[float]):
    return lambda idx: statistics.fmean(values[i] for i in idx)


def _ci(block: dict, key: str, value: dict) -> None:
    block.setdefault("ci", {})[key] = value


def _mia_scores(per_item: Mapping[str, Mapping], key: str, ids: list[str] | None = None) -> tuple[list, list, list, list]:
    """(member ids, non-member ids, member-likeness of each) for the items with a `key` score."""
    ids = ids if ids is not None else list(per_item)
    members = [i for i in ids if per_item[i].get("member") and per_item[i].get(key) is not None]
    others = [i for i in ids if not per_item[i].get("member") and per_item[i].get(key) is not None]
    return members, others, [-per_item[i][key] for i in members], [-per_item[i][key] for i in others]


def model_intervals(metrics: dict, items: Mapping[str, Any], ppl_aggregate: str = "mean", seed: int = 0,
                    resamples: int = u.RESAMPLES) -> dict:
    """Add `ci` blocks to one model's metrics (evaluate_model's and model_evidence's dict) from its
    per-item results; returns metrics."""
    kw = dict(seed=seed, resamples=resamples)
    parts = {}
    for name, (rate, label) in SETS.items():
        if name not in items or name not in metrics:
            continue
        per_item = items[name]
        ci = u.mean_interval(list(verdicts(per_item, label).values()), **kw)
        _ci(metrics, rate, ci)
        _ci(metrics[name], rate, ci)
        ids = list(per_item)
        parts[name] = SetLS(per_item, ids, ppl_aggregate)
        _ci(metrics[name], "ls", u.bootstrap([len(ids)], parts[name], value=metrics[name].get("ls"), **kw))
        for key in ("rouge1_recall", "rougeL_recall", "relevance"):  # relevance: with evaluate.embedding_model
            values = [per_item[i][key] for i in ids if per_item[i].get(key) is not None]
            if values:
                _ci(metrics[name], key, u.bootstrap([len(values)], _mean_of(values), value=metrics[name].get(key), **kw))
    if len(parts) == 2 and "ls" in metrics:  # the model's LS: the mean of the forget and retain sets' LS
        f, r = parts["forget"], parts["retain"]
        _ci(metrics, "ls", u.bootstrap([len(f.ppl), len(r.ppl)], lambda i, j: (f(i) + r(j)) / 2,
                                       value=metrics["ls"], **kw))
    for kind, block in (metrics.get("variants") or {}).items():
        per_item = items.get(f"variant_{kind}")
        if per_item:
            _ci(block, "kfr", u.mean_interval(list(verdicts(per_item, "forgotten").values()), **kw))
    mia, per_item = metrics.get("mia"), items.get("mia")
    if isinstance(mia, dict) and per_item:
        for key in [k for k in mia if k.endswith("_auc")]:
            members, others, pos, neg = _mia_scores(per_item, key[:-4])
            if members and others:
                _ci(mia, key, u.bootstrap([len(pos), len(neg)],
                                          lambda i, j, pos=pos, neg=neg: auc([pos[a] for a in i], [neg[b] for b in j]),
                                          value=mia[key], **kw))
    for name, block in (metrics.get("tofu") or {}).items():
        per_item = items.get(f"tofu_{name}")
        if not isinstance(block, dict) or not per_item:
            continue
        for key in ("truth_ratio", "rougeL_recall"):
            values = [v[key] for v in per_item.values() if v.get(key) is not None and math.isfinite(v[key])]
            if values and block.get(key) is not None:
                _ci(block, key, u.bootstrap([len(values)], _mean_of(values), value=block[key], **kw))
    return metrics


def _shared(a: Mapping, b: Mapping) -> list[str]:
    return [i for i in a if i in b]


def paired_intervals(metrics: dict[str, dict], items: dict[str, Mapping], ppl_aggregate: str = "mean",
                     seed: int = 0, resamples: int = u.RESAMPLES, model: str = "unlearned", target: str = "target",
                     control: str = "control") -> dict[str, dict]:
    """Intervals of the numbers that read one model against another, the same items resampled for
    both: metrics[model]['ci'] gets `ls_ratio`, `mia_auc_excess` (and the name-masked excess when
    the MIA has it) and `truth_ratio_vs_control`; every model but the control gets
    tofu.forget_quality.ci.p_value. Returns metrics."""
    from relearn.evaluation.tofu import forget_quality

    kw = dict(seed=seed, resamples=resamples)
    m = metrics.get(model)
    if m is None:
        return metrics
    if target in metrics and all(s in items.get(model, {}) and s in items.get(target, {}) for s in SETS):
        sets = {}
        for s in SETS:
            ids = _shared(items[model][s], items[target][s])
            sets[s] = (SetLS(items[model][s], ids, ppl_aggregate), SetLS(items[target][s], ids, ppl_aggregate))
        (fu, ft), (ru, rt) = sets["forget"], sets["retain"]

        def ls_ratio(i, j):
            reference = (ft(i) + rt(j)) / 2
            return (fu(i) + ru(j)) / 2 / reference if reference > 0 else math.nan

        t_ls, u_ls = metrics[target].get("ls"), m.get("ls")
        value = u_ls / t_ls if t_ls and u_ls is not None else None
        _ci(m, "ls_ratio", u.bootstrap([len(fu.ppl), len(ru.ppl)], ls_ratio, value=value, **kw))
    if control in metrics:
        mine, theirs = items.get(model, {}).get("mia"), items.get(control, {}).get("mia")
        for derived, score in MIA_EXCESS.items():
            key = f"{score}_auc"
            a, b = (m.get("mia") or {}).get(key), (metrics[control].get("mia") or {}).get(key)
            if not mine or not theirs or a is None or b is None:
                continue
            ids = _shared(mine, theirs)
            members, others, _, _ = _mia_scores(mine, score, ids)
            members = [i for i in members if theirs[i].get(score) is not None]
            others = [i for i in others if theirs[i].get(score) is not None]

            def excess(i, j, members=members, others=others, score=score):
                ms, os_ = [members[x] for x in i], [others[x] for x in j]
                return (auc([-mine[x][score] for x in ms], [-mine[x][score] for x in os_])
                        - auc([-theirs[x][score] for x in ms], [-theirs[x][score] for x in os_]))

            if members and others:
                _ci(m, derived, u.bootstrap([len(members), len(others)], excess, value=a - b, **kw))
        ratios = {}
        for name in (model, control):
            per_item = items.get(name, {}).get("tofu_forget") or {}
            ratios[name] = {i: v["truth_ratio"] for i, v in per_item.items()
                            if v.get("truth_ratio") is not None and math.isfinite(v["truth_ratio"])}
        ids = _shared(ratios[model], ratios[control])
        mine_tr, control_tr = [ratios[model][i] for i in ids], [ratios[control][i] for i in ids]
        tr_u = (m.get("tofu") or {}).get("forget", {}).get("truth_ratio")
        tr_c = (metrics[control].get("tofu") or {}).get("forget", {}).get("truth_ratio")
        if ids and tr_u is not None and tr_c:
            def tr_ratio(i):
                reference = statistics.fmean(control_tr[x] for x in i)
                return statistics.fmean(mine_tr[x] for x in i) / reference if reference > 0 else math.nan

            _ci(m, "truth_ratio_vs_control", u.bootstrap([len(ids)], tr_ratio, value=tr_u / tr_c, **kw))
        for name, block in metrics.items():
            quality = (block.get("tofu") or {}).get("forget_quality")
            per_item = items.get(name, {}).get("tofu_forget") or {}
            if name == control or not isinstance(quality, dict) or quality.get("p_value") is None:
                continue
            mine_r = {i: v["truth_ratio"] for i, v in per_item.items()
                      if v.get("truth_ratio") is not None and math.isfinite(v["truth_ratio"])}
            ids = _shared(mine_r, ratios[control])
            a, b = [mine_r[i] for i in ids], [ratios[control][i] for i in ids]

            def p_value(i, a=a, b=b):
                return forget_quality([a[x] for x in i], [b[x] for x in i])["p_value"]

            _ci(quality, "p_value", u.bootstrap([len(ids)], p_value, value=quality["p_value"], **kw))
    return metrics


# ------------------------------------------------------------------------------------ robustness
def _verdict_interval(per_item: Mapping[str, Mapping], kind: str, key: str, seed: int, resamples: int) -> dict:
    """Wilson interval of one rung's or probe's rate from the per-item results {id: {key: item}}."""
    label = SETS[kind][1]
    values = [by_key[key].get(label) for by_key in per_item.values() if key in by_key]
    return u.mean_interval([float(v) for v in values if v is not None], seed=seed, resamples=resamples)


def _drop_interval(per_item: Mapping[str, Mapping], reference: str, key: str, value: float | None, seed: int,
                   resamples: int) -> dict:
    """Paired bootstrap of a KFR drop (reference minus `key`) over the items scored under both."""
    pairs = [(float(b[reference]["forgotten"]), float(b[key]["forgotten"])) for b in per_item.values()
             if reference in b and key in b and b[reference].get("forgotten") is not None
             and b[key].get("forgotten") is not None]
    return u.bootstrap([len(pairs)], lambda i: statistics.fmean(pairs[x][0] - pairs[x][1] for x in i),
                       seed=seed, resamples=resamples, value=value)


def _recovery_parts(attack: Mapping) -> tuple[list[str], dict[str, float], dict[tuple, dict[str, float]]] | None:
    """(held ids, before verdicts, (lr, steps) -> after verdicts) of one relearning aggregate."""
    before = attack.get("held_forgotten_before")
    if not isinstance(before, Mapping):
        return None
    after = {(s.get("lr"), s.get("steps")): s.get("held_forgotten_after") or {} for s in attack.get("settings") or []}
    ids = [i for i, v in before.items() if v is not None]
    return ids, {i: float(before[i]) for i in ids}, after


def _recovery(ids: list[str], before: Mapping, after: Mapping) -> float:
    """Held KFR before minus after over the ids scored after the attack (NaN when none was)."""
    scored = [i for i in ids if after.get(i) is not None]
    if not scored:
        return math.nan
    return statistics.fmean(before[i] for i in scored) - statistics.fmean(float(after[i]) for i in scored)


def robustness_intervals(report: dict, items: Mapping[str, Any], seed: int = 0, resamples: int = u.RESAMPLES,
                         model: str = "unlearned", control: str = "control") -> dict:
    """`ci` blocks for the robustness stage: each model's KFR/KRR per precision rung and per probe
    (Wilson), its relearning recovery (bootstrap over held items), and in report['summary']['ci']
    the gated numbers: every rung's and probe's KFR drop (paired over items), paraphrase/perturb
    KFR, the lowest jailbreak KFR, and the relearning excess over the control (the items resampled
    for both models, the max over settings taken in every resample). Returns report."""
    kw = dict(seed=seed, resamples=resamples)
    summary = report.setdefault("summary", {})
    summary_ci = summary.setdefault("ci", {})
    for name, m in report.items():
        if name == "summary" or not isinstance(m, dict):
            continue
        per = items.get(name) or {}
        ladder, ladder_items = m.get("ladder"), (per.get("ladder") or {})
        if isinstance(ladder, dict) and ladder_items:
            for rung, block in (ladder.get("rungs") or {}).items():
                for kind in SETS:
                    _ci(block, SETS[kind][0], _verdict_interval(ladder_items.get(kind, {}), kind, rung, **kw))
                _ci(block, "kfr_drop", _drop_interval(ladder_items.get("forget", {}), ladder.get("reference"), rung,
                                                      (ladder.get("kfr_drop") or {}).get(rung), **kw))
        probes, probe_items = m.get("probes"), (per.get("probes") or {})
        if isinstance(probes, dict) and probe_items:
            for probe, block in (probes.get("probes") or {}).items():
                for kind in SETS:
                    _ci(block, SETS[kind][0], _verdict_interval(probe_items.get(kind, {}), kind, probe, **kw))
                _ci(block, "kfr_drop", _drop_interval(probe_items.get("forget", {}), "plain", probe,
                                                      block.get("kfr_drop"), **kw))
                if isinstance(block.get("guarded"), dict):  # the same answers through the output guard
                    for kind in SETS:
                        _ci(block["guarded"], SETS[kind][0],
                            _verdict_interval(probe_items.get(kind, {}), kind, f"{probe}+guard", **kw))
        attack = m.get("relearning")
        parts = _recovery_parts(attack) if isinstance(attack, dict) else None
        if parts:
            ids, before, after = parts
            worst = after.get((attack["worst"]["lr"], attack["worst"]["steps"]), {})
            _ci(attack, "recovery", u.bootstrap([len(ids)], lambda i, ids=ids, b=before, a=worst: _recovery(
                [ids[x] for x in i], b, a), value=attack.get("recovery"), **kw))
        if name != model:
            continue
        for rung, key in (("onnx-int8", "int8_kfr_drop"), ("onnx-int4", "int4_kfr_drop"), ("torch-bf16", "bf16_kfr_drop")):
            ci = (((ladder or {}).get("rungs") or {}).get(rung) or {}).get("ci", {}).get("kfr_drop")
            if ci and summary.get(key) is not None:
                summary_ci[key] = ci
        probe_blocks = (probes or {}).get("probes") or {}
        for probe, key in (("paraphrase", "paraphrase_kfr"), ("perturb", "perturb_kfr")):
            if probe in probe_blocks and summary.get(key) is not None:
                summary_ci[key] = probe_blocks[probe].get("ci", {}).get("kfr")
        weakest = ((probes or {}).get("jailbreak_min_kfr") or {}).get("probe")
        if weakest in probe_blocks and summary.get("jailbreak_min_kfr") is not None:
            summary_ci["jailbreak_min_kfr"] = probe_blocks[weakest].get("ci", {}).get("kfr")
        guarded = ((probes or {}).get("guarded_jailbreak_min_kfr") or {}).get("probe")
        if guarded in probe_blocks and summary.get("guarded_jailbreak_min_kfr") is not None:
            summary_ci["guarded_jailbreak_min_kfr"] = probe_blocks[guarded]["guarded"].get("ci", {}).get("kfr")
        worst = ((probes or {}).get("worst") or {}).get("probe")
        if worst in probe_blocks and summary.get("probe_max_kfr_drop") is not None:
            summary_ci["probe_max_kfr_drop"] = probe_blocks[worst].get("ci", {}).get("kfr_drop")
        if parts and summary.get("relearning_recovery") is not None:
            summary_ci["relearning_recovery"] = attack["ci"]["recovery"]
    mine = _recovery_parts((report.get(model) or {}).get("relearning") or {})
    theirs = _recovery_parts((report.get(control) or {}).get("relearning") or {})
    if mine and theirs and summary.get("relearning_excess") is not None:
        ids = [i for i in mine[0] if i in theirs[1]]
        settings = [s for s in mine[2] if s in theirs[2]]

        def excess(idx):
            chosen = [ids[x] for x in idx]
            values = [_recovery(chosen, mine[1], mine[2][s]) - _recovery(chosen, theirs[1], theirs[2][s])
                      for s in settings]
            values = [v for v in values if not math.isnan(v)]
            return max(values) if values else math.nan

        if ids and settings:
            summary_ci["relearning_excess"] = u.bootstrap([len(ids)], excess, value=summary["relearning_excess"], **kw)
    if not summary_ci:
        summary.pop("ci")
    return report
