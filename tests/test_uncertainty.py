"""Intervals and paired tests (relearn.evaluation.uncertainty, relearn.evaluation.intervals), the
gates that read an interval's end, and the paired tests of `relearn compare`. Reference values are
computed here independently (the Wilson formula by hand, scipy.stats.bootstrap on the values)."""
from __future__ import annotations

import math
import random

import pytest

from relearn.comparison import paired_markdown, paired_tests
from relearn.evaluation import uncertainty as u
from relearn.evaluation.intervals import compact_items, model_intervals, paired_intervals
from relearn.evaluation.linguistic import linguistic_score
from relearn.evaluation.mia import auc
from relearn.params import GateParams
from relearn.registry.gates import evaluate_gate, gate_tag, interval_key, parse_gate_tag, shortfall


def _wilson_by_hand(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import norm

    z = norm.ppf(1 - (1 - level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(9, 12), (0, 8), (8, 8), (1, 2), (37, 40)])
def test_wilson_interval_matches_the_formula(k, n):
    ci = u.wilson(k, n)
    low, high = _wilson_by_hand(k, n)
    assert (ci["value"], ci["n"], ci["method"]) == (k / n, n, "wilson")
    assert ci["low"] == pytest.approx(low, abs=1e-9) and ci["high"] == pytest.approx(high, abs=1e-9)
    assert 0.0 <= ci["low"] <= ci["value"] <= ci["high"] <= 1.0


def test_wilson_of_the_issue_example_and_of_nothing():
    ci = u.wilson(9, 12)  # KFR 0.75 on 12 items: "roughly 0.47-0.91"
    assert (round(ci["low"], 2), round(ci["high"], 2)) == (0.47, 0.91)
    assert u.describe(ci) == "0.750 [0.47, 0.91], n = 12"
    empty = u.wilson(0, 0)
    assert empty["low"] is None and empty["value"] is None and empty["n"] == 0


def test_bootstrap_is_seeded_and_equals_scipy_resampling_the_values():
    import numpy as np
    from scipy.stats import bootstrap

    rng = random.Random(1)
    values = [rng.gauss(10, 3) for _ in range(30)]

    def mean_of(idx):
        return sum(values[i] for i in idx) / len(idx)

    a = u.bootstrap([30], mean_of, seed=7)
    assert a == u.bootstrap([30], mean_of, seed=7)  # seeded: the same interval every time
    assert a != u.bootstrap([30], mean_of, seed=8)
    # resampling item indices is resampling the items: scipy on the values, same seed, same draws
    ref = bootstrap((np.array(values),), np.mean, n_resamples=u.RESAMPLES, method="percentile", vectorized=False,
                    rng=np.random.default_rng(7)).confidence_interval
    assert a["low"] == pytest.approx(ref.low, rel=1e-12) and a["high"] == pytest.approx(ref.high, rel=1e-12)
    assert a["value"] == pytest.approx(sum(values) / 30) and a["n"] == 30 and a["low"] < a["value"] < a["high"]
    # fewer than two items: no interval, the value and n still there
    one = u.bootstrap([1], mean_of, seed=0)
    assert one["low"] is None and one["value"] == values[0] and one["n"] == 1


def test_paired_bootstrap_sees_a_small_consistent_difference_that_separate_intervals_hide():
    rng = random.Random(0)
    hard = [rng.uniform(0, 1) for _ in range(40)]      # item difficulty, shared by both models
    a = [h + 0.03 + rng.gauss(0, 0.005) for h in hard]  # a is better by 0.03 on every item
    b = list(hard)
    ci_a = u.bootstrap([40], lambda i: sum(a[j] for j in i) / len(i), seed=0)
    ci_b = u.bootstrap([40], lambda i: sum(b[j] for j in i) / len(i), seed=0)
    assert ci_a["low"] < ci_b["high"], "on their own the two intervals overlap"
    paired = u.paired_bootstrap([40], lambda i: sum(a[j] - b[j] for j in i) / len(i), seed=0)
    assert paired["low"] > 0 and paired["p_value"] < 0.01 and u.significant(paired)
    # independent noise around the same level: no difference
    c = [h + rng.gauss(0, 0.05) for h in hard]
    same = u.paired_bootstrap([40], lambda i: sum(c[j] - b[j] for j in i) / len(i), seed=0)
    assert same["low"] < 0 < same["high"] and same["p_value"] > 0.05 and u.significant(same) is False


def test_mcnemar_counts_only_disagreements():
    a = [True] * 6 + [True, False] * 5
    b = [False] * 6 + [True, False] * 5
    test = u.mcnemar(a, b)
    assert (test["a_only"], test["b_only"], test["n"]) == (6, 0, 16)
    assert test["p_value"] == pytest.approx(2 * 0.5 ** 6)  # exact two-sided binomial on 6 discordant pairs
    assert u.mcnemar([True, False, True], [False, True, True])["p_value"] == pytest.approx(1.0)
    assert u.mcnemar([True], [True])["p_value"] == 1.0
    with pytest.raises(ValueError):
        u.mcnemar([True], [True, False])


# ------------------------------------------------------------------------------------ per model
ANSWERS = ["Alice was born somewhere in the north.", "I am not sure where that was.", "He worked in a small town.",
           "The details are not widely known.", "She has written several books over the years.",
           "It is not something I can say.", "They moved often when young.", "Paris, in 1957."]


def _evidence(n_forget=12, forgotten=9, n_retain=10, retained=8, ppl_shift=0.0, variants=True):
    items = {"forget": {}, "retain": {}}
    for i in range(n_forget):
        items["forget"][f"f{i}"] = {"answer": ANSWERS[i % 8], "ppl": 5.0 + i + ppl_shift, "forgotten": i < forgotten,
                                    "rouge1_recall": (i % 4) / 4, "rougeL_recall": (i % 3) / 3}
    for i in range(n_retain):
        items["retain"][f"r{i}"] = {"answer": ANSWERS[(i + 3) % 8], "ppl": 3.0 + i / 2 + ppl_shift,
                                    "retained": i < retained, "rouge1_recall": 0.5, "rougeL_recall": (i % 2) / 2}
    metrics = {}
    for name, rate, label in (("forget", "kfr", "forgotten"), ("retain", "krr", "retained")):
        answers = [it["answer"] for it in items[name].values()]
        ppls = [it["ppl"] for it in items[name].values()]
        metrics[name] = {rate: sum(it[label] for it in items[name].values()) / len(answers),
                         **linguistic_score(answers, ppls),
                         "rouge1_recall": sum(it["rouge1_recall"] for it in items[name].values()) / len(answers),
                         "rougeL_recall": sum(it["rougeL_recall"] for it in items[name].values()) / len(answers)}
    metrics.update(kfr=metrics["forget"]["kfr"], krr=metrics["retain"]["krr"],
                   ls=(metrics["forget"]["ls"] + metrics["retain"]["ls"]) / 2)
    if variants:
        items["variant_noisy"] = {f"v{i}": {"forgotten": i < 3} for i in range(5)}
        metrics["variants"] = {"noisy": {"kfr": 0.6}}
    return metrics, items


def test_model_intervals_give_every_number_its_interval_and_n():
    metrics, items = _evidence()
    members = {f"m{i}": {"loss": 1.0 + i / 10, "member": True} for i in range(8)}
    others = {f"h{i}": {"loss": 1.5 + i / 10, "member": False} for i in range(8)}
    items["mia"] = {**members, **others}
    metrics["mia"] = {"loss_auc": auc([-v["loss"] for v in members.values()], [-v["loss"] for v in others.values()]),
                      "n_members": 8, "n_nonmembers": 8}
    model_intervals(metrics, items, seed=0, resamples=200)
    kfr = metrics["ci"]["kfr"]
    assert (kfr["n"], kfr["method"], kfr["value"]) == (12, "wilson", 0.75)
    assert (kfr["low"], kfr["high"]) == pytest.approx(_wilson_by_hand(9, 12))
    assert metrics["forget"]["ci"]["kfr"] == kfr and metrics["ci"]["krr"]["n"] == 10
    for block, key in ((metrics["forget"], "ls"), (metrics["retain"], "ls"), (metrics, "ls"),
                       (metrics["forget"], "rougeL_recall"), (metrics["mia"], "loss_auc")):
        ci = block["ci"][key]
        assert ci["method"] == "bootstrap" and ci["value"] == pytest.approx(block[key])
        assert ci["low"] <= ci["value"] <= ci["high"], key
    assert metrics["ci"]["ls"]["n"] == 22 and metrics["mia"]["ci"]["loss_auc"]["n"] == 16
    assert metrics["variants"]["noisy"]["ci"]["kfr"]["n"] == 5
    # with evaluate.rounds > 1 an item's verdict is its share of rounds: a bootstrap, not Wilson
    items["forget"]["f0"]["forgotten_rounds"] = [True, False, True]
    again, _ = _evidence()
    model_intervals(again, items, seed=0, resamples=200)
    assert again["ci"]["kfr"]["method"] == "bootstrap"


def test_paired_intervals_resample_the_same_items_for_both_models():
    unlearned, u_items = _evidence(ppl_shift=3.0)
    target, t_items = _evidence()
    metrics = {"target": target, "unlearned": unlearned}
    paired_intervals(metrics, {"target": t_items, "unlearned": u_items}, seed=0, resamples=300)
    ratio = unlearned["ci"]["ls_ratio"]
    assert ratio["value"] == pytest.approx(unlearned["ls"] / target["ls"]) and ratio["n"] == 22
    assert ratio["low"] <= ratio["value"] <= ratio["high"] < 1.0  # higher PPL on every item: surely below 1
    assert interval_key("ls_ratio") == "unlearned.ci.ls_ratio"


# ------------------------------------------------------------------------------------ gates
def _flat(value: float, low: float, high: float, n: int) -> dict:
    return {"unlearned.kfr": value, "unlearned.ci.kfr.low": low, "unlearned.ci.kfr.high": high,
            "unlearned.ci.kfr.n": float(n)}


def test_a_gate_on_the_lower_bound_fails_where_the_value_passes():
    flat = _flat(0.9, 0.62, 0.97, 12)
    on_value = evaluate_gate("kfr", GateParams("unlearned.kfr", min=0.8), flat)
    on_bound = evaluate_gate("kfr", GateParams("unlearned.kfr", min=0.8, bound="lower"), flat)
    assert on_value.passed and not on_bound.passed
    assert on_bound.reason == "lower end of the 95% interval 0.62 < min 0.8"
    tag = gate_tag(on_bound)
    assert tag == "value=0.9000 ci=0.6200..0.9700 n=12 min=0.8 bound=lower failed"
    parsed = parse_gate_tag(tag)
    assert parsed == {"value": 0.9, "ci": [0.62, 0.97], "n": 12, "min": 0.8, "bound": "lower", "passed": False}
    assert shortfall(0.9, 0.8, None, "lower", parsed["ci"]) == "lower end 0.62 of [0.62, 0.97] < min 0.8"
    assert evaluate_gate("kfr", GateParams("unlearned.kfr", min=0.6, bound="lower"), flat).passed
    assert not evaluate_gate("kfr", GateParams("unlearned.kfr", max=0.95, bound="upper"), flat).passed
    missing = evaluate_gate("kfr", GateParams("unlearned.kfr", min=0.5, bound="lower"), {"unlearned.kfr": 0.9})
    assert not missing.passed and missing.reason == "interval not found"
    assert "ci=" not in gate_tag(evaluate_gate("kfr", GateParams("unlearned.kfr", min=0.5), {"unlearned.kfr": 0.9}))


def test_the_version_description_shows_the_bound_and_the_interval():
    from relearn.registry.versions import version_description

    failed = gate_tag(evaluate_gate("kfr", GateParams("unlearned.kfr", min=0.8, bound="lower"), _flat(0.9, 0.62, 0.97, 12)))
    passed = gate_tag(evaluate_gate("krr", GateParams("unlearned.kfr", min=0.5, bound="lower"), _flat(0.9, 0.62, 0.97, 12)))
    text = version_description({"gate.kfr": failed, "gate.krr": passed, "gate.status": "failed", "release": "api"})
    assert "- kfr: lower end 0.62 of [0.62, 0.97] < min 0.8; value 0.9, n = 12" in text
    assert "Gates read on an end of the metric's 95% interval" in text
    assert "- krr: lower end 0.62 of [0.62, 0.97]; value 0.9, n = 12: passed" in text


def test_params_refuse_an_unknown_bound(tmp_path):
    from relearn.errors import UserError
    from relearn.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text("register:\n  gates:\n    kfr: {metric: unlearned.kfr, min: 0.8, bound: lowest}\n")
    with pytest.raises(UserError, match=r"params.yaml:3: register.gates.kfr.bound: 'lowest' is not one of value, "
                                        r"lower, upper"):
        load_params(str(path))


# ------------------------------------------------------------------------------------ compare
def test_compare_tests_each_method_against_relearn_on_the_same_items():
    relearn_metrics, relearn_items = _evidence(forgotten=6, n_forget=12)
    npo_metrics, npo_items = _evidence(forgotten=12, n_forget=12, ppl_shift=40.0)  # forgets all, fluency worse
    ga_metrics, ga_items = _evidence(forgotten=7, n_forget=12)                     # one more item: noise
    results = {name: {"metrics": m, "per_item": compact_items(items)}
               for name, (m, items) in {"relearn": (relearn_metrics, relearn_items), "npo": (npo_metrics, npo_items),
                                        "ga": (ga_metrics, ga_items)}.items()}
    assert "answer" not in str(results["npo"]["per_item"])  # verdicts and numbers only, no text
    tests = {t["method"]: t for t in paired_tests(results, seed=0, resamples=300)}
    assert set(tests) == {"npo", "ga"}
    assert (tests["npo"]["kfr"]["a_only"], tests["npo"]["kfr"]["b_only"]) == (6, 0)
    assert tests["npo"]["kfr"]["p_value"] == pytest.approx(2 * 0.5 ** 6)
    assert tests["npo"]["kfr"]["difference"] == pytest.approx(0.5)
    assert tests["npo"]["ls"]["difference"] < 0 and tests["npo"]["ls"]["p_value"] < 0.05
    assert tests["ga"]["kfr"]["p_value"] == 1.0 and "KFR +0.083 (p = 1, not significant" in tests["ga"]["summary"]
    table = paired_markdown(list(tests.values()))
    assert "| ga |" in table and "no significant difference" in table and "differs in KFR, LS" in table


def test_a_bootstrap_p_of_zero_reads_as_below_one_resample():
    """A bootstrap cannot give a p below one resample in its count; an exact test's p is shown to 0.001."""
    from relearn.comparison import _p

    assert _p({"p_value": 0.0, "resamples": 200}) == "< 0.005"
    assert _p({"p_value": 0.0, "resamples": 1000}) == "< 0.001"
    assert _p({"p_value": 0.004, "resamples": 200}) == "< 0.005" and _p({"p_value": 0.004}) == "0.004"
    assert _p({"p_value": 0.0004}) == "< 0.001"                      # McNemar: exact
    assert _p({"p_value": 0.25, "resamples": 200}, "= ") == "= 0.25" and _p({"p_value": None}) == "-"


# ------------------------------------------------------------------------------------ robustness
def _attack(before: dict, afters: dict) -> dict:
    settings = [{"lr": lr, "steps": steps, "held_forgotten_after": after,
                 "recovery": sum(before.values()) / len(before) - sum(after.values()) / len(after)}
                for (lr, steps), after in afters.items()]
    worst = max(settings, key=lambda s: s["recovery"])
    return {"held_forgotten_before": before, "settings": settings, "recovery": worst["recovery"],
            "worst": {"lr": worst["lr"], "steps": worst["steps"], "recovery": worst["recovery"]}}


def test_robustness_intervals_cover_rungs_probes_recovery_and_the_excess_over_the_control():
    from relearn.evaluation.intervals import robustness_intervals
    from relearn.evidence import robustness_summary

    ids = [f"f{i}" for i in range(12)]
    before = {i: True for i in ids}
    unlearned = _attack(before, {(1e-5, 10): {i: k >= 3 for k, i in enumerate(ids)},    # 3 of 12 back
                                 (1e-5, 50): {i: k >= 9 for k, i in enumerate(ids)}})   # 9 of 12 back
    control = _attack(before, {(1e-5, 10): {i: k >= 1 for k, i in enumerate(ids)},
                               (1e-5, 50): {i: k >= 2 for k, i in enumerate(ids)}})
    for a in (unlearned, control):
        a.update(attacker="full", folds=1, seed=0, batch_size=4, schedule="constant", group_by="subject", fraction=0.5)
    ladder_items = {"forget": {i: {"torch-fp32": {"forgotten": True}, "onnx-int4": {"forgotten": k >= 2}}
                               for k, i in enumerate(ids)}, "retain": {}}
    probe_items = {"forget": {i: {"plain": {"forgotten": True}, "jailbreak:x": {"forgotten": k >= 4}}
                              for k, i in enumerate(ids)}, "retain": {}}
    report = {
        "unlearned": {"relearning": unlearned,
                      "ladder": {"reference": "torch-fp32", "kfr_drop": {"torch-fp32": 0.0, "onnx-int4": 2 / 12},
                                 "rungs": {"torch-fp32": {"kfr": 1.0}, "onnx-int4": {"kfr": 10 / 12}}},
                      "probes": {"probes": {"plain": {"kfr": 1.0, "kfr_drop": 0.0},
                                            "jailbreak:x": {"kfr": 8 / 12, "kfr_drop": 4 / 12}},
                                 "worst": {"probe": "jailbreak:x", "kfr": 8 / 12, "kfr_drop": 4 / 12},
                                 "jailbreak_min_kfr": {"probe": "jailbreak:x", "kfr": 8 / 12}}},
        "control": {"relearning": control}}
    report["summary"] = robustness_summary(report)
    assert report["summary"]["relearning_excess"] == pytest.approx(9 / 12 - 2 / 12)
    robustness_intervals(report, {"unlearned": {"ladder": ladder_items, "probes": probe_items}}, seed=0, resamples=300)
    ci = report["summary"]["ci"]
    assert (ci["jailbreak_min_kfr"]["low"], ci["jailbreak_min_kfr"]["high"]) == pytest.approx(_wilson_by_hand(8, 12))
    assert ci["int4_kfr_drop"]["value"] == pytest.approx(2 / 12) and ci["int4_kfr_drop"]["n"] == 12
    assert ci["relearning_recovery"]["value"] == pytest.approx(0.75)
    excess = ci["relearning_excess"]
    assert excess["value"] == pytest.approx(7 / 12) and excess["n"] == 12
    assert 0 < excess["low"] < excess["value"] < excess["high"] <= 1
    assert report["unlearned"]["ladder"]["rungs"]["onnx-int4"]["ci"]["kfr"]["n"] == 12
    # the gates find them where interval_key says
    from relearn.registry.gates import flatten

    flat = flatten({"robustness": report["summary"]})
    assert flat[interval_key("robustness.relearning_excess") + ".low"] == excess["low"]
