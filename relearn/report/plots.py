"""The report's plots as inline SVG (matplotlib, no pyplot, no global backend change).

Text stays text (`svg.fonttype: none`), so the report's final secret scan sees every label; ids are
renumbered per plot so that several SVGs can share one page. Every label passed in must already be
masked: the plots draw what they are given.
"""
from __future__ import annotations

import io
import math
import re
from typing import Mapping, Sequence

MODEL_COLORS = {"target": "#7d8590", "control": "#3b82f6", "unlearned": "#d9480f"}
_EXTRA_COLORS = ["#2f9e44", "#7048e8", "#0c8599", "#e67700"]
SEESAW_BINS = 20

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "relearn-report",
    "font.family": ["DejaVu Sans", "sans-serif"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#d0d7de",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
}


def color(model: str, i: int = 0) -> str:
    return MODEL_COLORS.get(model, _EXTRA_COLORS[i % len(_EXTRA_COLORS)])


def _label(text: str) -> str:
    """Plain text for matplotlib: `$` would start mathtext."""
    return str(text).replace("$", r"\$")


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def to_svg(fig, prefix: str, label: str) -> str:
    """The figure as an `<svg>` element ready to inline in HTML."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None,
                                             "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r"<!--.*?-->\s*", "", svg, flags=re.S)
    # 2 decimals of a point are plenty on screen, and the page is a third smaller
    svg = re.sub(r"(?<![\w#])(-?\d+\.\d{3,})", lambda m: f"{float(m.group(1)):.2f}", svg)
    ids: dict[str, str] = {}
    for old in re.findall(r'\bid="([^"]+)"', svg):
        ids.setdefault(old, f"{prefix}-{len(ids)}")
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{ids[m.group(1)]}"', svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{ids.get(m.group(1), m.group(1))}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{ids.get(m.group(1), m.group(1))})", svg)
    import html

    width_pt = fig.get_figwidth() * 72
    svg = re.sub(r'<svg\b([^>]*?)\swidth="[^"]*"\s+height="[^"]*"',
                 lambda m: (f'<svg{m.group(1)} width="100%" style="max-width:{width_pt:.0f}pt" role="img" '
                            f'aria-label="{html.escape(label)}"'), svg, count=1)
    return svg.strip()


def _finish(fig, axes, rotated: bool, xlabel: bool = False) -> None:
    """One legend above the panels and fixed margins (tight_layout is slow and not needed)."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncols=len(handles), fontsize=8.5,
                   bbox_to_anchor=(0.5, 0.995))
    height = fig.get_figheight()
    bottom = (0.85 if rotated else 0.5) + (0.3 if xlabel else 0.0)
    fig.subplots_adjust(left=0.62 / fig.get_figwidth() * 1.0 + 0.02, right=0.98, top=1 - 0.62 / height,
                        bottom=bottom / height, wspace=0.22)


def _rc():
    import matplotlib

    return matplotlib.rc_context(_RC)


def bar_groups(title: str, panels: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]],
               categories: Sequence[str], prefix: str, ylabel: str = "rate",
               ylim: tuple[float, float] | None = (0, 1.05), hline: float | None = None) -> str | None:
    """Grouped bars: one panel per (panel title, {series: {category: value}}), one group per
    category, one bar per series."""
    panels = [(name, series) for name, series in panels
              if any(_finite(v.get(c)) is not None for v in series.values() for c in categories)]
    if not panels or not categories:
        return None
    with _rc():
        width = max(5.0, min(11.0, 1.4 + 0.6 * len(categories) * len(panels)))
        fig, axes = _figure(width, 3.0, len(panels))
        for ax, (panel, series) in zip(axes, panels):
            n = max(len(series), 1)
            bar = 0.8 / n
            for i, (name, values) in enumerate(series.items()):
                xs = [k + (i - (n - 1) / 2) * bar for k in range(len(categories))]
                ys = [_finite(values.get(c)) for c in categories]
                ax.bar([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None],
                       bar * 0.92, label=_label(name), color=color(name, i))
            ax.set_xticks(range(len(categories)), [_label(c) for c in categories],
                          rotation=20 if len(categories) > 4 else 0, ha="right" if len(categories) > 4 else "center")
            ax.set_title(_label(panel), fontsize=10)
            ax.set_ylabel(_label(ylabel))
            if ylim:
                ax.set_ylim(*ylim)
            if hline is not None:
                ax.axhline(hline, color="#57606a", linewidth=0.9, linestyle="--")
            ax.grid(axis="x", visible=False)
        _finish(fig, axes, rotated=len(categories) > 4)
        return to_svg(fig, prefix, title)


def ladder(title: str, panels: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]],
           rungs: Sequence[str], prefix: str) -> str | None:
    """Lines over the precision ladder: one panel per metric, one line per model."""
    panels = [(name, series) for name, series in panels
              if any(_finite(v.get(r)) is not None for v in series.values() for r in rungs)]
    if not panels or not rungs:
        return None
    with _rc():
        fig, axes = _figure(max(6.0, 3.6 * len(panels)), 3.1, len(panels))
        for ax, (panel, series) in zip(axes, panels):
            for i, (name, values) in enumerate(series.items()):
                points = [(k, _finite(values.get(r))) for k, r in enumerate(rungs)]
                points = [(k, y) for k, y in points if y is not None]
                if points:
                    ax.plot([k for k, _ in points], [y for _, y in points], marker="o", markersize=4,
                            linewidth=1.6, label=_label(name), color=color(name, i))
            ax.set_xticks(range(len(rungs)), [_label(r) for r in rungs], rotation=25, ha="right")
            ax.set_ylim(-0.03, 1.05)
            ax.set_title(_label(panel), fontsize=10)
        _finish(fig, axes, rotated=True)
        return to_svg(fig, prefix, title)


def histogram_shares(values: Sequence[float], bins: int = SEESAW_BINS) -> list[float]:
    """Share of `values` (probabilities, clipped to [0, 1]) in each of `bins` equal bins."""
    counts = [0] * bins
    for v in values:
        counts[min(max(int(v * bins), 0), bins - 1)] += 1
    total = sum(counts) or 1
    return [c / total for c in counts]


def seesaw(title: str, shares: Mapping[str, Sequence[float]], prefix: str) -> str | None:
    """Step histograms of forget-answer token probabilities, one per model (shares per bin)."""
    shares = {k: list(v) for k, v in shares.items() if v}
    if not shares:
        return None
    with _rc():
        fig, axes = _figure(7.0, 3.0)
        ax = axes[0]
        for i, (name, row) in enumerate(shares.items()):
            n = len(row)
            edges = [k / n for k in range(n + 1)]
            c = color(name, i)
            ax.stairs(row, edges, fill=True, alpha=0.25, color=c)
            ax.stairs(row, edges, linewidth=1.6, color=c, label=_label(name))
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability of the forget answer's token")
        ax.set_ylabel("share of tokens")
        _finish(fig, axes, rotated=False, xlabel=True)
        return to_svg(fig, prefix, title)
