"""The unlearning report: one self-contained HTML page and a markdown summary per model version,
for an approver deciding whether a model truly forgot.

    html, markdown = render_report(data)
    paths = write_report(data, "reports/unlearning")   # {"html": Path, "markdown": Path}

`data` (every part optional; a missing or malformed part is shown as "not measured"):

    model_name, version, method, created (ISO text), gate_status ("passed" | "failed")
    gates: [{name, metric, value, min, max, passed, reason}]    (or GateResult objects)
    models: {target|control|unlearned: {kfr, krr, ls, forget: {...}, retain: {...},
             variants: {kind: {kfr, krr?, ...}}, tofu: {forget: {probability, truth_ratio},
             retain: {...}, forget_quality: {ks_statistic, p_value}, model_utility}, mia: {loss_auc,
             mink_auc}}}
    robustness: {role: {ladder: {rungs: {rung: {kfr, krr}}}, probes: {probes: {plain|paraphrase|perturb|
                 jailbreak:<id>: {kfr, krr}}, worst: {probe, kfr}, jailbreak_min_kfr: {probe, kfr}},
                 relearning: {kfr_before, kfr_after, recovery, steps}}}   (relearn.robustness.probe_model)
    seesaw: {role: [token probabilities] | {"histogram": [share per equal bin of [0, 1]]}}
    examples: [{id, question, answer_target, answer_unlearned, reference}]
    secrets: [every forget-set fact value]: masked everywhere (see `relearn.report.masking`)
    lineage: {any nested mapping of dataset hashes, git commit, params digest, ...}

Masking is applied to every string as it is written, and the finished HTML and markdown are
scanned once more: a secret that survives raises `SecretLeakError` and nothing is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from relearn.report.masking import MASK, Masker, SecretLeakError

__all__ = ["MASK", "Masker", "SecretLeakError", "render_report", "write_report"]

HTML_NAME, MARKDOWN_NAME = "report.html", "report.md"


def render_report(data: Mapping[str, Any] | None) -> tuple[str, str]:
    """(html, markdown) of the report; raises `SecretLeakError` if a secret survives masking."""
    from relearn.report.html import render_html
    from relearn.report.markdown import render_markdown
    from relearn.report.sections import build

    data = data if isinstance(data, Mapping) else {}
    masker = Masker(data.get("secrets") if isinstance(data.get("secrets"), (list, tuple)) else [])
    report = build(data, masker)
    page, summary = render_html(report, masker), render_markdown(report, masker)
    masker.check_html(page)
    masker.check_text(summary)
    return page, summary


def write_report(data: Mapping[str, Any] | None, out_dir: str | Path) -> dict[str, Path]:
    """Render and write `report.html` and `report.md` into `out_dir` (each atomically; nothing is
    written when rendering fails)."""
    from relearn.io import write_text

    page, summary = render_report(data)
    out_dir = Path(out_dir)
    paths = {"html": out_dir / HTML_NAME, "markdown": out_dir / MARKDOWN_NAME}
    write_text(paths["html"], page)
    write_text(paths["markdown"], summary)
    return paths
