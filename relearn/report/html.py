"""The report as one self-contained HTML page: inline CSS, inline SVG plots, no external resource.

Every string written goes through `masker.mask` and then `html.escape` (the page's own headings
too, so a secret that happens to be an ordinary word is masked wherever it appears).
"""
from __future__ import annotations

import html as _html

from relearn.report.sections import Cell, Example, Para, Plot, Report, Section, Table

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;--pass:#1a7f37;--passbg:#dafbe1;
--fail:#c0222c;--failbg:#ffebe9;--na:#59636e;--nabg:#eaeef2;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;background:#eef1f4;color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;background:#fff;padding:28px 36px 40px;min-height:100vh}
header.top{display:grid;grid-template-columns:minmax(0,1fr) auto;align-items:start;gap:24px;
border-bottom:1px solid var(--line);padding-bottom:16px}
h1{font-size:26px;line-height:1.25;margin:0 0 8px}
h2{font-size:20px;margin:34px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
.meta{margin:0;color:var(--muted)}.meta b{color:var(--fg);font-weight:600}
.verdict{flex:0 0 auto;text-align:center;border-radius:10px;padding:12px 22px;border:2px solid}
.verdict .label{font-size:12px;letter-spacing:.08em;text-transform:uppercase}
.verdict .word{font-size:28px;font-weight:800;letter-spacing:.04em}
.verdict.passed{background:var(--passbg);color:var(--pass);border-color:var(--pass)}
.verdict.failed{background:var(--failbg);color:var(--fail);border-color:var(--fail)}
.verdict.unknown{background:var(--nabg);color:var(--na);border-color:var(--na)}
.vnote{margin:6px 0 0;font-size:13px;color:var(--muted);max-width:260px}
nav.toc{margin:12px 0 0;font-size:14px;line-height:1.9}
nav.toc a{color:var(--accent);text-decoration:none;margin-right:16px;display:inline-block}
nav.toc a:hover{text-decoration:underline}
.glance{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px;margin:18px 0 0}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 12px;background:var(--soft)}
.card .k{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
.card .d{font-size:12px;color:var(--muted);overflow-wrap:anywhere}
.scroll{overflow-x:auto;margin:8px 0 16px}
table{border-collapse:collapse;font-size:14px}
th,td{padding:5px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap}
tbody tr:hover{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th.num{text-align:right}
th.group{text-align:center;border-bottom:2px solid var(--line);background:#eef1f4}
th.num+th:not(.num),td.num+td:not(.num){padding-left:18px}
td.strong{font-weight:600}
td.muted,.muted{color:var(--muted)}
td.mono,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;
overflow-wrap:anywhere}
td.pass{color:var(--pass);font-weight:700}td.pass::before{content:"\\2714\\00a0"}
td.fail{color:var(--fail);font-weight:700}td.fail::before{content:"\\2718\\00a0"}
td.num.fail::before{content:none}
tr.failrow{background:#fff5f5}
tr.groupstart td{border-top:2px solid var(--line)}
tr.worst td{font-weight:700;background:#fff8e6}
p.note{color:var(--muted);font-size:14px;margin:4px 0 8px;max-width:860px}
p.warn{color:var(--fail);font-weight:600}
p.muted{font-style:italic}
figure.plot{margin:10px 0 14px}
figure.plot svg{display:block;width:100%;height:auto}
figcaption{color:var(--muted);font-size:13px;margin-top:2px}
.example{border:1px solid var(--line);border-radius:8px;margin:10px 0;padding:10px 14px}
.example h3{margin:0 0 6px;font-size:14px;font-family:ui-monospace,Menlo,Consolas,monospace;
color:var(--muted);font-weight:600}
.example dl{display:grid;grid-template-columns:170px 1fr;gap:4px 14px;margin:0}
.example dt{color:var(--muted);font-size:13px;padding-top:1px}
.example dd{margin:0;overflow-wrap:anywhere}
footer{margin-top:36px;padding-top:10px;border-top:1px solid var(--line);color:var(--muted);font-size:13px}
@media (max-width:700px){main{padding:16px}header.top{grid-template-columns:1fr}
.example dl{grid-template-columns:1fr}}
@media print{body{background:#fff}main{padding:0}nav.toc{display:none}h2{break-after:avoid}
.example,figure.plot,table{break-inside:avoid}}
"""

_VERDICT_CLASS = {"passed": "passed", "failed": "failed"}


def render_html(report: Report, masker) -> str:
    def t(text: object) -> str:
        return _html.escape(masker.mask(text))

    def cls_attr(cls: str) -> str:
        return f' class="{cls}"' if cls else ""

    def table(tab: Table) -> str:
        num_cols = {i for i in range(len(tab.headers))
                    if tab.rows and all("num" in row[i].cls.split() for row in tab.rows if i < len(row))}
        labels = tab.sub if len(tab.sub) == len(tab.headers) and tab.groups else tab.headers
        head = "".join(f'<th{cls_attr("num" if i in num_cols else "")} scope="col">{t(h)}</th>'
                       for i, h in enumerate(labels))
        if labels is tab.sub:
            top = "".join(f'<th colspan="{span}" scope="colgroup" class="group">{t(g)}</th>' if span > 1 or g
                          else "<th></th>" for g, span in tab.groups)
            head = f"{top}</tr><tr>{head}"
        body = []
        for k, row in enumerate(tab.rows):
            cls = tab.row_cls[k] if k < len(tab.row_cls) and tab.row_cls[k] else ""
            cells = "".join(cell(c) for c in row)
            body.append(f"<tr{cls_attr(cls)}>{cells}</tr>")
        return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                f'<tbody>{"".join(body)}</tbody></table></div>')

    def cell(c: Cell) -> str:
        return f"<td{cls_attr(c.cls)}>{t(c.text)}</td>"

    def example(e: Example) -> str:
        rows = [("question", e.question), ("reference answer", e.reference),
                ("target answer", e.answer_target), ("unlearned answer", e.answer_unlearned)]
        items = "".join(f"<dt>{t(k)}</dt><dd>{t(v)}</dd>" for k, v in rows)
        return f'<article class="example"><h3>{t(e.id)}</h3><dl>{items}</dl></article>'

    def block(b) -> str:
        if isinstance(b, Table):
            return table(b)
        if isinstance(b, Para):
            return f"<p{cls_attr(b.cls)}>{t(b.text)}</p>"
        if isinstance(b, Plot):
            return f'<figure class="plot">{b.svg}<figcaption>{t(b.caption)}</figcaption></figure>'
        if isinstance(b, Example):
            return example(b)
        raise TypeError(f"unknown report block {type(b).__name__}")

    def section(s: Section) -> str:
        return f'<section id="{s.id}"><h2>{t(s.title)}</h2>{"".join(block(b) for b in s.blocks)}</section>'

    vclass = _VERDICT_CLASS.get(report.verdict, "unknown")
    toc = "".join(f'<a href="#{s.id}">{t(s.title)}</a>' for s in report.sections)
    cards = "".join(f'<div class="card"><div class="k">{t(k)}</div><div class="v">{t(v)}</div>'
                    f'<div class="d">{t(d)}</div></div>' for k, v, d in report.glance)
    glance = f'<div class="glance" id="glance">{cards}</div>' if cards else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{t(report.title)}</title><style>{CSS}</style></head><body><main>",
        '<header class="top"><div>',
        f"<h1>Unlearning report: {t(report.model_name)}</h1>",
        f'<p class="meta">version <b>{t(report.version)}</b> · method <b>{t(report.method)}</b>'
        f" · created <b>{t(report.created)}</b></p>",
        f'<nav class="toc">{toc}</nav></div>',
        f'<div><div class="verdict {vclass}" id="verdict"><div class="label">{t("gate verdict")}</div>'
        f'<div class="word">{t(report.verdict.upper())}</div></div>'
        f'<p class="vnote">{t(report.verdict_note)}</p></div>',
        "</header>",
        glance,
        *(section(s) for s in report.sections),
        f"<footer>{t(masking_note(report))}</footer>",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def masking_note(report: Report) -> str:
    return (f"Forgotten facts are masked as [redacted]: {report.secrets} forget-set fact values, with "
            "their rare words, numbers and other spellings of dates. The finished report was scanned "
            "for them again before it was written.")
