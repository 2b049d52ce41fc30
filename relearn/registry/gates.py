"""Promotion gates: thresholds on metrics that a version must pass to become the challenger.

Metrics arrive nested (`{"unlearned": {"kfr": 0.9}}`) and are checked by dotted key
(`unlearned.kfr`). The verdicts are written to the model version as tags, one per gate
(`gate.kfr = value=0.9000 ci=0.7500..0.9700 n=32 min=0.8 passed`) plus `gate.status`.

A gate compares min and max with the metric's point value (`bound: value`) or with one end of its
95% interval (`bound: lower` / `upper`). The interval of `a.b.kfr` is `a.b.ci.kfr.low/high/n`
(relearn.evaluation.uncertainty); a derived metric's (`ls_ratio`, ...) is the unlearned model's
`unlearned.ci.<name>`. A gate on a bound whose interval is missing fails ("interval not found").

Whether a failing gate blocks depends on how the model is released (`register.release`): a gate
blocks only under the releases in its `blocks`. Behind an API nobody can fine-tune the weights or
read their losses, so the relearning, membership-inference and truth-ratio gates are advisory
there: evaluated and shown (`gate.relearning = value=0.8750 max=0.25 failed advisory`, listed in
`gate.advisory`), never blocking. `gate.status` sums up the blocking gates only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from relearn.errors import UserError
from relearn.params import GATE_BOUNDS, GATE_TAG_NAMES, RELEASES, GateParams

PASSED, FAILED, ADVISORY = "passed", "failed", "advisory"

# What a verdict under each release vouches for, in an approver's words: the version's description
# in the MLflow UI (relearn.registry.versions.version_description) and the report's verdict say the
# same. "covers" is what the blocking gates of the default register.gates measure.
RELEASE_SCOPE = {
    "api": {
        "meaning": "served behind an API: users send questions and read answers; they cannot fine-tune "
                   "the weights or read the model's losses",
        "covers": "the answers the served model gives, including after int4/int8 quantization and under "
                  "jailbreak prompts",
        "not_covers": "someone fine-tuning the weights (relearning), membership inference on the weights; "
                      "these are shown as advisory",
    },
    "weights": {
        "meaning": "the weights, or a fine-tuning API, are released: anyone may fine-tune the model or "
                   "read its losses",
        "covers": "the answers the model gives, including after int4/int8 quantization and under jailbreak "
                  "prompts, and what the weights still hold: a relearning attack (fine-tuning on part of "
                  "the forget set), membership inference and the TOFU truth ratio, each against the control",
        "not_covers": "attacks stronger than the ones measured (more fine-tuning steps, data or other "
                      "learning rates than the robustness.relearn_* settings)",
    },
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested mapping -> `{"a.b": float}`; values that are not numbers are skipped."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif _is_number(value):
            flat[name] = float(value)
    return flat


def derived(flat: Mapping[str, float]) -> dict[str, float]:
    """`flat` plus metrics computed from it, each read against a reference model so that one
    threshold means the same on any data set:

    - `ls_ratio` = unlearned LS / target LS;
    - `mia_auc_excess` = unlearned - control LOSS membership-inference AUC (0: the forget set is
      as hard to tell from never-seen questions as for a model that never saw it); the `mia` gate
      reads this one: a model that still finds the forgotten people's names familiar leaks their
      membership, whatever else it forgot;
    - `mia_name_masked_auc_excess` = the same over the answer tokens that are not the subject's
      name (`mia.name_masked_loss_auc`): whether knowledge beyond the names is left, shown beside
      the gated one and gated by nothing by default;
    - `truth_ratio_vs_control` = unlearned / control forget-set TOFU truth ratio (1.0: true and
      perturbed answers weighed as the control weighs them; below 1 the true answers are still
      preferred). A ratio rather than a difference: the truth ratio is itself a ratio of
      probabilities, so "twice the control's" means the same whatever the control's level.

    A metric whose inputs are missing is left out, so its gate fails as "metric not found".
    """
    out = dict(flat)
    target, unlearned = flat.get("target.ls"), flat.get("unlearned.ls")
    if target is not None and unlearned is not None and target > 0:
        out["ls_ratio"] = unlearned / target
    control, unlearned = flat.get("control.mia.loss_auc"), flat.get("unlearned.mia.loss_auc")
    if control is not None and unlearned is not None:
        out["mia_auc_excess"] = unlearned - control
    control, unlearned = flat.get("control.mia.name_masked_loss_auc"), flat.get("unlearned.mia.name_masked_loss_auc")
    if control is not None and unlearned is not None:
        out["mia_name_masked_auc_excess"] = unlearned - control
    control, unlearned = flat.get("control.tofu.forget.truth_ratio"), flat.get("unlearned.tofu.forget.truth_ratio")
    if control is not None and unlearned is not None and control > 0:
        out["truth_ratio_vs_control"] = unlearned / control
    return out


@dataclass
class GateResult:
    """The verdict of one gate on one metric."""

    name: str
    metric: str
    value: float | None
    min: float | None
    max: float | None
    passed: bool
    reason: str
    blocking: bool = True  # False: advisory under the release it was evaluated for (shown, never blocking)
    blocks: list[str] | None = None  # the releases under which it blocks (the gate's `blocks`)
    bound: str = "value"  # what min/max were compared with: the value or an end of the 95% interval
    low: float | None = None  # the metric's 95% interval and item count, where known
    high: float | None = None
    n: int | None = None


def interval_key(metric: str) -> str:
    """Where the 95% interval of `metric` sits in the flat metrics: `a.b.kfr` -> `a.b.ci.kfr`; a
    derived metric (no dot: `ls_ratio`) -> `unlearned.ci.ls_ratio`, read against its reference."""
    head, _, leaf = metric.rpartition(".")
    return f"{head}.ci.{leaf}" if head else f"unlearned.ci.{leaf}"


def interval_of(flat: Mapping[str, float], metric: str) -> tuple[float | None, float | None, int | None]:
    """(low, high, n) of `metric`'s 95% interval; None where not known."""
    key = interval_key(metric)
    n = flat.get(f"{key}.n")
    return flat.get(f"{key}.low"), flat.get(f"{key}.high"), None if n is None else int(n)


def blocks_under(gate: GateParams, release: str | None) -> bool:
    """Whether a failure of `gate` blocks a version released as `release`; None: every gate
    blocks (the strictest reading, and what gates meant before releases existed)."""
    return release is None or release in gate.blocks


def evaluate_gate(name: str, gate: GateParams, flat: Mapping[str, float], release: str | None = None) -> GateResult:
    value = flat.get(gate.metric)
    blocking = blocks_under(gate, release)
    bound = getattr(gate, "bound", "value") or "value"
    if bound not in GATE_BOUNDS:
        raise UserError(f"register.gates.{name}.bound: {bound!r} is not one of {', '.join(GATE_BOUNDS)}")
    low, high, n = interval_of(flat, gate.metric)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(name, gate.metric, value, gate.min, gate.max, passed, reason, blocking, list(gate.blocks),
                          bound, low, high, n)

    if value is None:
        return result(False, "metric not found")
    if math.isnan(value):
        return result(False, "metric is NaN")
    compared, what = value, ""
    if bound != "value":
        compared = low if bound == "lower" else high
        what = f"{bound} end of the 95% interval "
        if compared is None or math.isnan(compared):
            return result(False, "interval not found")
    if gate.min is not None and compared < gate.min:
        return result(False, f"{what}{compared:.4g} < min {gate.min:g}")
    if gate.max is not None and compared > gate.max:
        return result(False, f"{what}{compared:.4g} > max {gate.max:g}")
    return result(True, "ok")


def evaluate_gates(flat: Mapping[str, float], gates: Mapping[str, GateParams],
                   release: str | None = None) -> list[GateResult]:
    """One result per gate, in the order of `gates`, each marked blocking or advisory under
    `release` (None: all blocking)."""
    for name in GATE_TAG_NAMES:
        if name in gates:
            raise UserError(f"register.gates: a gate may not be named {name!r} (its tag would clash with gate.{name})")
    if release is not None and release not in RELEASES:
        raise UserError(f"register.release: {release!r} is not one of {', '.join(RELEASES)}")
    return [evaluate_gate(name, gate, flat, release) for name, gate in gates.items()]


def gate_tag(result: GateResult) -> str:
    """`value=0.8512 ci=0.7012..0.9321 n=40 min=0.8 bound=lower passed` (`value=missing` when the
    metric was not found; `ci` and `n` when its interval is known; `bound` unless it is the value),
    with ` advisory` after the verdict when the gate does not block under the version's release."""
    parts = ["value=missing" if result.value is None else f"value={result.value:.4f}"]
    if result.low is not None and result.high is not None:
        parts.append(f"ci={result.low:.4f}..{result.high:.4f}")
    if result.n is not None:
        parts.append(f"n={result.n}")
    if result.min is not None:
        parts.append(f"min={result.min:g}")
    if result.max is not None:
        parts.append(f"max={result.max:g}")
    if result.bound != "value":
        parts.append(f"bound={result.bound}")
    parts.append(PASSED if result.passed else FAILED)
    if not result.blocking:
        parts.append(ADVISORY)
    return " ".join(parts)


def shortfall(value: Any, min: Any = None, max: Any = None, bound: str = "value", ci: Any = None) -> str:
    """How a value misses its bounds, for people: `0.875 > max 0.25`, `0.3 < min 0.8`, `missing`;
    for a gate on an interval's end (bound lower/upper, ci 'low..high'):
    `lower end 0.62 of [0.62, 0.91] < min 0.7`."""
    if not _is_number(value):
        return "missing" if value in (None, "missing") else str(value)
    if math.isnan(value):
        return "NaN"
    if bound in ("lower", "upper"):
        low, high = _ends(ci)
        end = low if bound == "lower" else high
        if end is None:
            return "interval not found"
        where = f"{bound} end {end:.4g} of [{low:.4g}, {high:.4g}]"
        if _is_number(min) and end < min:
            return f"{where} < min {min:g}"
        if _is_number(max) and end > max:
            return f"{where} > max {max:g}"
        return where
    if _is_number(min) and value < min:
        return f"{value:.4g} < min {min:g}"
    if _is_number(max) and value > max:
        return f"{value:.4g} > max {max:g}"
    return f"{value:.4g}"


def _ends(ci: Any) -> tuple[float | None, float | None]:
    """(low, high) of a tag's `ci=low..high` text, or of a [low, high] pair."""
    if isinstance(ci, str) and ".." in ci:
        try:
            low, high = (float(x) for x in ci.split("..", 1))
            return low, high
        except ValueError:
            return None, None
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return ci[0], ci[1]
    return None, None


def blocking_failures(results: list[GateResult]) -> list[GateResult]:
    """The failed gates that block the version."""
    return [r for r in results if r.blocking and not r.passed]


def advisory_failures(results: list[GateResult]) -> list[GateResult]:
    """The failed gates that are only advisory under the version's release."""
    return [r for r in results if not r.blocking and not r.passed]


def overall_status(results: list[GateResult]) -> str:
    """`passed` only when there is at least one blocking gate and every blocking gate passed:
    advisory gates never decide it, and a set of gates that blocks nothing proves nothing."""
    blocking = [r for r in results if r.blocking]
    return PASSED if blocking and all(r.passed for r in blocking) else FAILED


def gate_tags(results: list[GateResult]) -> dict[str, str]:
    """Version tags: `gate.<name>` for each gate, `gate.status` for the blocking ones and, when
    some advisory gate failed, `gate.advisory` = their names (comma-separated)."""
    tags = {f"gate.{r.name}": gate_tag(r) for r in results}
    tags["gate.status"] = overall_status(results)
    advisory = advisory_failures(results)
    if advisory:
        tags["gate.advisory"] = ",".join(r.name for r in advisory)
    return tags


def parse_gate_tag(text: str) -> dict[str, Any]:
    """Inverse of `gate_tag`: `{"value": 0.85, "min": 0.8, "passed": True}`, plus `"advisory": True`
    for an advisory gate (tags written before releases existed have no such word: they blocked).
    Unknown parts are kept as text."""
    parsed: dict[str, Any] = {}
    for part in text.split():
        if part in (PASSED, FAILED):
            parsed["passed"] = part == PASSED
        elif part == ADVISORY:
            parsed["advisory"] = True
        elif "=" in part:
            key, _, raw = part.partition("=")
            if key == "ci":
                low, high = _ends(raw)
                parsed[key] = [low, high] if low is not None else raw
                continue
            try:
                parsed[key] = int(raw) if key == "n" else float(raw)
            except ValueError:
                parsed[key] = raw
    return parsed
