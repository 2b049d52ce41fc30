"""Promotion gates: thresholds on metrics that a version must pass to become the challenger.

Metrics arrive nested (`{"unlearned": {"kfr": 0.9}}`) and are checked by dotted key
(`unlearned.kfr`). The verdicts are written to the model version as tags, one per gate
(`gate.kfr = value=0.9000 min=0.8 passed`) plus `gate.status`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from relearn.errors import UserError
from relearn.params import GateParams

PASSED, FAILED = "passed", "failed"


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
    """`flat` plus metrics computed from it: `ls_ratio` = unlearned LS / target LS."""
    out = dict(flat)
    target, unlearned = flat.get("target.ls"), flat.get("unlearned.ls")
    if target is not None and unlearned is not None and target > 0:
        out["ls_ratio"] = unlearned / target
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


def evaluate_gate(name: str, gate: GateParams, flat: Mapping[str, float]) -> GateResult:
    value = flat.get(gate.metric)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(name, gate.metric, value, gate.min, gate.max, passed, reason)

    if value is None:
        return result(False, "metric not found")
    if math.isnan(value):
        return result(False, "metric is NaN")
    if gate.min is not None and value < gate.min:
        return result(False, f"{value:.4g} < min {gate.min:g}")
    if gate.max is not None and value > gate.max:
        return result(False, f"{value:.4g} > max {gate.max:g}")
    return result(True, "ok")


def evaluate_gates(flat: Mapping[str, float], gates: Mapping[str, GateParams]) -> list[GateResult]:
    """One result per gate, in the order of `gates`."""
    if "status" in gates:
        raise UserError("register.gates: a gate may not be named 'status' (its tag would clash with gate.status)")
    return [evaluate_gate(name, gate, flat) for name, gate in gates.items()]


def gate_tag(result: GateResult) -> str:
    """`value=0.8512 min=0.8 passed` (`value=missing` when the metric was not found)."""
    parts = ["value=missing" if result.value is None else f"value={result.value:.4f}"]
    if result.min is not None:
        parts.append(f"min={result.min:g}")
    if result.max is not None:
        parts.append(f"max={result.max:g}")
    parts.append(PASSED if result.passed else FAILED)
    return " ".join(parts)


def overall_status(results: list[GateResult]) -> str:
    """`passed` only when there is at least one gate and every gate passed."""
    return PASSED if results and all(r.passed for r in results) else FAILED


def gate_tags(results: list[GateResult]) -> dict[str, str]:
    """Version tags: `gate.<name>` for each gate and `gate.status` for all of them."""
    tags = {f"gate.{r.name}": gate_tag(r) for r in results}
    tags["gate.status"] = overall_status(results)
    return tags


def parse_gate_tag(text: str) -> dict[str, Any]:
    """Inverse of `gate_tag`: `{"value": 0.85, "min": 0.8, "passed": True}` (unknown parts kept as text)."""
    parsed: dict[str, Any] = {}
    for part in text.split():
        if part in (PASSED, FAILED):
            parsed["passed"] = part == PASSED
        elif "=" in part:
            key, _, raw = part.partition("=")
            try:
                parsed[key] = float(raw)
            except ValueError:
                parsed[key] = raw
    return parsed
