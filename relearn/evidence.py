"""The evidence on one unlearned model, gathered for the gates, the registry and the report.

    model_evidence     KFR/KRR/LS/ROUGE per set and variant, TOFU metrics, membership inference
                       and the seesaw histogram, for one model (target, control or unlearned)
    add_forget_quality TOFU's forget quality of each model against the retain-only control
    registry_metrics   the nested numbers a model version is logged and gated with
    secrets            every forget-set fact value, which the report must never show
    report_data        the input of relearn.report.write_report

The library functions it calls know nothing of files; the DVC stages read and write.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping

from relearn.comparison import probability_histogram
from relearn.evaluation.evaluate import evaluate_model
from relearn.evaluation.keyfacts import extract_key_facts
from relearn.evaluation.mia import mia
from relearn.evaluation.tofu import forget_quality, model_utility, tofu_set_metrics
from relearn.modeling.generation import answer_token_logprobs, generate_answers
from relearn.params import Params
from relearn.records import QARecord

MODELS = ("target", "control", "unlearned")


def _with_options(records: list[QARecord]) -> list[QARecord]:
    """The records TOFU's truth ratio can be computed on: those with perturbed answers."""
    return [r for r in records if r.perturbed_answer]


def model_evidence(model, tokenizer, splits: Mapping[str, list[QARecord]], variants: list[QARecord],
                   ppl_model, ppl_tokenizer, params: Params) -> tuple[dict, dict]:
    """(metrics, per-item results) of one model.

    splits needs forget, forget_eval, retain_eval, holdout and general. metrics is evaluate_model's
    dict plus `tofu` ({forget, retain, general, model_utility}), `mia` (forget vs holdout) and
    `seesaw` (histogram of the original forget answers' token probabilities).
    """
    m, e = params.model, params.evaluate
    metrics, items = evaluate_model(model, tokenizer, splits["forget_eval"], splits["retain_eval"], variants,
                                    ppl_model, ppl_tokenizer, params)
    # TOFU: probability and ROUGE-L on every eval item; truth ratio where perturbed answers exist
    tofu: dict[str, Any] = {}
    for name, records, kind in (("forget", splits["forget_eval"], "forget"), ("retain", splits["retain_eval"], "retain")):
        answers = [items[name][r.id]["answer"] for r in records]
        tofu[name], per_item = tofu_set_metrics(model, tokenizer, records, answers, m.prompt, m.max_length,
                                                e.batch_size, kind=kind)
        items[f"tofu_{name}"] = per_item
    general = _with_options(splits["general"])
    if general:
        answers = generate_answers(model, tokenizer, [r.question for r in general], m.prompt,
                                   e.max_new_tokens, e.batch_size, desc="generate general")
        tofu["general"], items["tofu_general"] = tofu_set_metrics(model, tokenizer, general, answers,
                                                                  m.prompt, m.max_length, e.batch_size,
                                                                  kind="general")
    tofu["model_utility"] = model_utility({k: v for k, v in tofu.items() if k in ("retain", "general")})
    metrics["tofu"] = tofu
    # membership inference: does the model still tell the forget set (trained) from the holdout (never trained)?
    metrics["mia"], items["mia"] = mia(model, tokenizer, splits["forget"], splits["holdout"], m.prompt,
                                       m.max_length, e.batch_size, k=params.robustness.mia_k)
    # the seesaw: how likely the model finds the original forget answers, token by token
    logprobs = answer_token_logprobs(model, tokenizer, [r.question for r in splits["forget"]],
                                     [r.answer for r in splits["forget"]], m.prompt, m.max_length,
                                     e.batch_size)
    metrics["seesaw"] = probability_histogram(logprobs)
    return metrics, items


HEADLINE = ("kfr", "krr", "ls")


def headline_metrics(evaluation: Mapping[str, Mapping[str, Any]]) -> dict:
    """metrics.json: each model's KFR, KRR and LS at the keys `dvc metrics show` and the gates have
    always read, and beside them `ci.<metric>.low/high/n` (the 95% interval and the item count)."""
    out = {}
    for name, m in evaluation.items():
        row: dict[str, Any] = {k: m[k] for k in HEADLINE if k in m}
        ci = {k: {"low": c.get("low"), "high": c.get("high"), "n": c.get("n")}
              for k, c in (m.get("ci") or {}).items() if k in HEADLINE}
        if ci:
            row["ci"] = ci
        out[name] = row
    return out


def truth_ratios(items: Mapping[str, Any]) -> list[float]:
    """The forget-set truth ratios of one model's per-item results."""
    return [v["truth_ratio"] for v in items.get("tofu_forget", {}).values() if v.get("truth_ratio") is not None]


def add_forget_quality(metrics: dict[str, dict], items: dict[str, dict], control: str = "control") -> None:
    """metrics[name]['tofu']['forget_quality'] for every model: KS test of its forget-set truth ratios
    against the control's (the control's own is the test against itself: p = 1)."""
    reference = truth_ratios(items[control])
    for name in metrics:
        metrics[name]["tofu"]["forget_quality"] = forget_quality(truth_ratios(items[name]), reference)


# ------------------------------------------------------------------------------------ robustness
def _get(tree: Mapping[str, Any] | None, *path: str):
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def robustness_summary(report: Mapping[str, Any], model: str = "unlearned", control: str = "control") -> dict:
    """The gateable numbers of the robustness stage, for `model` (read against the control):

        int8_kfr_drop, int4_kfr_drop  KFR at torch fp32 minus KFR at that ONNX rung (> 0: rounding
                                      brought knowledge back)
        bf16_kfr_drop                 the same for torch bf16
        paraphrase_kfr, perturb_kfr   KFR under paraphrased and misspelt questions
        jailbreak_min_kfr             the lowest KFR over the jailbreak prompts
        guarded_jailbreak_min_kfr     the same with the answers passed through the output guard
                                      (relearn.serving.guard), as `relearn serve` sends them
        guard_krr_drop                KRR minus KRR through the guard on the plain questions (its
                                      false-positive cost; 0 when it redacts nothing it should not):
                                      the larger of the retain set's and the general set's, where
                                      the general set was probed
        probe_max_kfr_drop            the largest KFR drop over every probe
        relearning_recovery           held-out KFR lost after the relearning attack (the worst case
                                      over the attack's settings)
        relearning_excess             recovery minus the control's (knowledge hidden, not gone): the
                                      largest, over the attack's (lr, steps) settings, of the model's
                                      recovery minus the control's under that same setting. Recovery
                                      is always read against the control under the same attack: the
                                      model's worst setting and the control's may differ, and a
                                      control's recovery at one setting says nothing of another. A
                                      report from before the sweep (no `settings`) gives recovery
                                      minus the control's recovery.
    A number a disabled part would give is None (and a gate on it fails as 'metric not found'); so
    is the excess when the two models were not attacked in the same way. Which setting is the
    worst is not a gateable number: it is in each model's `relearning` aggregate (`worst`,
    `settings`), and the report shows the grid.
    """
    m = report.get(model, {})
    rungs = _get(m, "ladder", "rungs") or {}
    probes = _get(m, "probes", "probes") or {}

    def drop(rung: str):  # the ladder's own drop, against its reference rung (torch-fp32 when measured)
        return _get(m, "ladder", "kfr_drop", rung) if rung in rungs else None

    recovery = _get(m, "relearning", "recovery")
    return {
        "bf16_kfr_drop": drop("torch-bf16"),
        "int8_kfr_drop": drop("onnx-int8"),
        "int4_kfr_drop": drop("onnx-int4"),
        "paraphrase_kfr": _get(probes, "paraphrase", "kfr"),
        "perturb_kfr": _get(probes, "perturb", "kfr"),
        "jailbreak_min_kfr": _get(m, "probes", "jailbreak_min_kfr", "kfr"),
        "probe_max_kfr_drop": _get(m, "probes", "worst", "kfr_drop"),
        "guarded_jailbreak_min_kfr": _get(m, "probes", "guarded_jailbreak_min_kfr", "kfr"),
        "guard_krr_drop": _guard_krr_drop(_get(probes, "plain")),
        "relearning_recovery": recovery,
        "relearning_excess": _relearning_excess(_get(m, "relearning"), _get(report, control, "relearning")),
    }


def _guard_krr_drop(plain) -> float | None:
    drops = []
    for block in (plain, (plain or {}).get("general")):
        krr, guarded = (block or {}).get("krr"), ((block or {}).get("guarded") or {}).get("krr")
        if krr is not None and guarded is not None and krr == krr and guarded == guarded:  # NaN: nothing scored
            drops.append(krr - guarded)
    return max(drops) if drops else None


# what makes two relearning attacks the same attack, besides the (lr, steps) of a setting
_ATTACK_KEYS = ("attacker", "lora_r", "folds", "fraction", "group_by", "seed", "batch_size", "schedule")


def _relearning_excess(attacked: Any, control: Any) -> float | None:
    """max over shared (lr, steps) settings of attacked recovery - control recovery (see robustness_summary)."""
    if not isinstance(attacked, Mapping) or not isinstance(control, Mapping):
        return None
    if "settings" not in attacked and "settings" not in control:  # before the sweep: one setting each
        recovery, control_recovery = attacked.get("recovery"), control.get("recovery")
        return None if recovery is None or control_recovery is None else recovery - control_recovery
    if any(attacked.get(k) != control.get(k) for k in _ATTACK_KEYS):
        return None
    from math import isfinite

    def recoveries(aggregate: Mapping) -> dict[tuple, float]:  # (lr, steps) -> recovery, where measured
        return {(s.get("lr"), s.get("steps")): s["recovery"] for s in aggregate.get("settings") or []
                if isinstance(s, Mapping) and isinstance(s.get("recovery"), (int, float)) and isfinite(s["recovery"])}

    mine, theirs = recoveries(attacked), recoveries(control)
    excess = [mine[k] - theirs[k] for k in mine if k in theirs]
    return max(excess) if excess else None


# ------------------------------------------------------------------------------------ registry
def registry_metrics(evaluation: Mapping[str, Any], export: Mapping[str, Any] | None,
                     robustness: Mapping[str, Any] | None) -> dict:
    """What a version is logged and gated with: `target.*`, `control.*`, `unlearned.*` (evaluation,
    without the seesaw histogram), `export.*` and `robustness.*` (the summary and each model's probes)."""
    out: dict[str, Any] = {name: {k: v for k, v in m.items() if k != "seesaw"} for name, m in evaluation.items()}
    if export:
        out["export"] = {k: v for k, v in export.items() if k not in ("seconds", "paths", "deployable")}
    if robustness:
        out["robustness"] = {**robustness.get("summary", {}), **{k: v for k, v in robustness.items()
                                                                 if k in MODELS}}
    return out


def request_gates(evaluation: Mapping[str, Any], kfr_min: float) -> dict:
    """One gate per erasure request the version covers, `request.<id>`: its unlearned KFR >= kfr_min."""
    from relearn.params import GateParams

    return {f"request.{rid}": GateParams(f"unlearned.requests.{rid}.kfr", min=kfr_min)
            for rid in (_get(evaluation, "unlearned", "requests") or {})}


def request_rows(manifest: Mapping[str, Any], evaluation: Mapping[str, Any], gates: list[dict]) -> list[dict]:
    """The report's per-request table: id, kind, received, KFR of the target and of the unlearned
    model, questions scored, where they come from, and the request's gate."""
    verdicts = {g["name"]: g["passed"] for g in gates}
    rows = []
    for rid, entry in manifest.get("requests", {}).items():
        rows.append({"id": rid, "kind": entry.get("kind"), "received": entry.get("received"),
                     "kfr_target": _get(evaluation, "target", "requests", rid, "kfr"),
                     "kfr": _get(evaluation, "unlearned", "requests", rid, "kfr"),
                     "ci": _get(evaluation, "unlearned", "requests", rid, "ci", "kfr"),
                     "n": _get(evaluation, "unlearned", "requests", rid, "n"), "eval": entry.get("eval"),
                     "passed": verdicts.get(f"request.{rid}")})
    return rows


# ------------------------------------------------------------------------------------ report
def secrets(records: list[QARecord]) -> list[str]:
    """Every forget-set value the report must not show: fact values, the subjects (the people the
    facts are about) and, for free-text answers without facts, their key facts. A key fact of one
    word is kept only with a digit ('1957', '20th') or as an acronym ('KGB'): single words such as
    'Space' or 'solid' do not identify anyone, and the report's own markup uses them (the rare words
    of multi-word facts and names are masked on their own by the report)."""
    found: set[str] = set()
    for r in records:
        if r.facts:
            found.update(v for v in r.facts.values() if v)
        else:
            found.update(k for k in extract_key_facts(r.answer, r.question)
                         if " " in k.strip() or any(c.isdigit() for c in k) or sum(c.isupper() for c in k) >= 2)
        if r.subject:
            found.add(r.subject)
    return sorted(found, key=lambda s: (-len(s), s))


def _examples(answers: Mapping[str, Any], records: list[QARecord], n: int = 6) -> list[dict]:
    by_id = {r.id: r for r in records}
    target, unlearned = answers.get("target", {}).get("forget", {}), answers.get("unlearned", {}).get("forget", {})
    rows = []
    for rid in list(unlearned)[:n]:
        r = by_id.get(rid)
        if r is None:
            continue
        # no reference answer: the report shows what the models say, never the ground truth
        rows.append({"id": rid, "question": r.question,
                     "answer_target": target.get(rid, {}).get("answer", ""),
                     "answer_unlearned": unlearned[rid].get("answer", "")})
    return rows


def method_label(params: Params) -> str:
    """How the unlearned model was made, in one line: the method, the hardening options that are on
    and the distillation, e.g. 'relearn + harden(negative=dpo, mask) + distill(alpha 0.8)'."""
    h = params.unlearn.harden
    on = [f"sam_rho={h.sam_rho:g}"] if h.sam_rho else []
    on += [f"negative={h.negative}"] if h.negative != "none" else []
    on += [name for name in ("mask", "normalise") if getattr(h, name)]
    label = params.unlearn.method + (f" + harden({', '.join(on)})" if on else "") + f" (LoRA r={params.unlearn.lora.r})"
    if params.distill.enabled:
        label += f" + distill(alpha {params.distill.alpha:g}, from the {params.distill.init} model)"
    return label


def report_data(params: Params, registration: Mapping[str, Any], evaluation: Mapping[str, Any],
                robustness: Mapping[str, Any] | None, answers: Mapping[str, Any], forget_records: list[QARecord],
                dataset_hashes: Mapping[str, str], git_commit: str | None,
                requests: list[dict] | None = None) -> dict:
    """The input of relearn.report.write_report for one registered version (`requests`: `request_rows`)."""
    return {
        "requests": requests or [],
        "model_name": params.register.model_name,
        "version": registration.get("version"),
        "method": method_label(params),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gate_status": registration.get("gate_status"),
        "release": params.register.release,  # which gates block: the report says what the verdict covers
        "gates": registration.get("gates", []),
        "models": {name: m for name, m in evaluation.items()},
        "robustness": {k: v for k, v in (robustness or {}).items() if k in MODELS},
        "robustness_summary": (robustness or {}).get("summary", {}),
        "seesaw": {name: {"histogram": m["seesaw"]} for name, m in evaluation.items() if m.get("seesaw")},
        "examples": _examples(answers, forget_records),
        "secrets": secrets(forget_records),
        "lineage": {"git_commit": git_commit or "unknown", "data_source": params.data.source,
                    **{f"md5 {k}": v for k, v in dataset_hashes.items()}},
    }
