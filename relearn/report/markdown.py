"""The report's markdown summary (for a model version's description, a pull request, a chat).

Same content as the HTML page without the plots and the examples. Every string is masked, then
escaped for markdown tables (`|`, line breaks) and for HTML (`<`, `>`, `&`), since most markdown
renderers pass raw HTML through.
"""
from __future__ import annotations

import re

from relearn.report.html import masking_note
from relearn.report.sections import Example, Para, Plot, Report, Table

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def render_markdown(report: Report, masker) -> str:
    def t(text: object) -> str:
        s = masker.mask(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        s = _MD_SPECIAL.sub(r"\\\1", s)
        return " ".join(s.split())

    def table(tab: Table) -> list[str]:
        width = len(tab.headers)
        align = ["---:" if tab.rows and all("num" in r[i].cls.split() for r in tab.rows if i < len(r))
                 else "---" for i in range(width)]
        lines = ["| " + " | ".join(t(h) or " " for h in tab.headers) + " |", "|" + "|".join(align) + "|"]
        for row in tab.rows:
            cells = []
            for c in row[:width]:
                text = t(c.text)
                if c.cls in ("pass", "fail"):
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells + [""] * (width - len(cells))) + " |")
        return lines + [""]

    mark = {"passed": "PASSED ✅", "failed": "FAILED ❌"}.get(report.verdict, report.verdict.upper())
    out = [f"# Unlearning report: {t(report.model_name)}", "",
           f"- version: **{t(report.version)}**", f"- method: **{t(report.method)}**",
           f"- created: {t(report.created)}", f"- **gate verdict: {t(mark)}** ({t(report.verdict_note)})", ""]
    if report.glance:
        out += ["## At a glance", ""]
        out += [f"- {t(k)}: **{t(v)}**" + (f" ({t(d)})" if d else "") for k, v, d in report.glance]
        out.append("")
    for s in report.sections:
        if not s.in_summary:
            n = sum(isinstance(b, Example) for b in s.blocks)
            out += [f"## {t(s.title)}", "", t(f"{n} examples in the HTML report (masked)." if n
                                              else "not measured"), ""]
            continue
        out += [f"## {t(s.title)}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                out += table(b)
            elif isinstance(b, Para):
                out += [f"_{t(b.text)}_" if b.cls in ("note", "muted") else t(b.text), ""]
            elif isinstance(b, Plot):
                continue
    out += ["---", "", f"_{t(masking_note(report))}_", ""]
    return "\n".join(out)
