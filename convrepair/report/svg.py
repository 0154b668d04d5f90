"""Charts for the self-contained HTML page, drawn with matplotlib as inline SVG.

Every chart has labelled axes with ticks and units and prints its values as text (a reviewer
reads numbers, not bar lengths); text stays text in the SVG (`svg.fonttype = none`), so the
browser renders and searches it. No scripts, no network assets. matplotlib is imported here
only, lazily, through `Figure` (no pyplot global state)."""

from __future__ import annotations

import io
import itertools
import math
import re
import textwrap
from typing import Any, Sequence

COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2"]
STATUS_COLOURS = {"ok": "#54a24b", "diverged": "#d62728", "carried": "#f58518", "fused": "#4c78a8", "incomparable": "#999999",
                  "first jump": "#9467bd", "named by the static diff": "#9467bd"}
#: one line each, under the chart: what a status means
STATUS_MEANING = {
    "diverged": "the first layer whose relative L2 error is above the threshold",
    "first jump": "below the threshold, the first layer whose error jumps more than tenfold over every layer before it: where "
                  "small faults and rounding start",
    "named by the static diff": "below the threshold, the layer whose parameters or attributes differ from the source's",
    "carried": "after the first divergent layer, an error carried forward from it",
    "fused": "the target computes this layer together with the next one (e.g. a BatchNorm folded into its Conv), so its "
             "output differs by design and the next layer agrees again; not a fault",
    "ok": "within the threshold",
}
LINESTYLES = ["-", "--", ":", "-."]  # identical series (a perfect repair) stay visible
_ids = itertools.count()

_RC = {"svg.fonttype": "none", "font.size": 9, "font.family": "DejaVu Sans", "axes.spines.top": False,
       "axes.spines.right": False, "axes.titlesize": 10, "axes.titleweight": "bold"}


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _to_svg(fig, alt: str) -> str:
    """The figure as an <svg> element for inlining: no XML prologue, ids unique on the page."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": "convrepair"}):  # deterministic output
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    # in HTML the parser knows SVG's namespaces: drop the declarations and the RDF metadata block
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    # matplotlib numbers ids per figure (figure_1, patch_1, …): prefix them, and what points at them
    prefix = f"c{next(_ids)}-"
    text = re.sub(r'\bid="', f'id="{prefix}', text)
    text = re.sub(r'(url\(#|href="#)', rf"\g<1>{prefix}", text)
    return re.sub(r"<svg ", f'<svg role="img" aria-label="{_attr(alt)}" ', text, count=1)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _draw(fn):
    """Run a drawing function under our rc settings (fonts as text, no top/right spines)."""
    import matplotlib

    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


def fmt(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def wrap_name(name: str, width: int = 40, most: int = 6) -> str:
    """A layer name on as many lines as it takes (TFLite joins fused names with ';'); only a name
    past `most` lines is shortened, marked, and the table under the chart has it whole."""
    lines = textwrap.wrap(name.replace(";", "; "), width, break_long_words=True, break_on_hyphens=False) or [name]
    return "\n".join(lines[:most]) + (" …" if len(lines) > most else "")


def layer_label(row: dict[str, Any], threshold: float | None, named_by_static_diff: bool = False) -> str:
    """The status a chart with a threshold line may print for a layer: "diverged" only to the
    right of the line. Localization also names a first layer below it (the first tenfold jump,
    or the layer the static diff names); the chart says which, never "diverged" left of the line."""
    status = row.get("status") or "?"
    value = row.get("rel_l2")
    if status == "diverged" and threshold is not None and value is not None and value <= threshold:
        return "named by the static diff" if named_by_static_diff else "first jump"
    return status


@_draw
def layer_divergence(layers: list[dict[str, Any]], threshold: float | None, title: str,
                     named_by_static_diff: bool = False) -> str:
    """Relative L2 error per aligned layer as dots on a log axis (a dot, not a bar: its length
    would mean nothing on a log axis), the divergence threshold as a line, every value printed."""
    rows = [r for r in layers if r.get("rel_l2") is not None]
    if not rows:
        return ""
    names = [wrap_name(r["target_layer"] if r["target_layer"] == r["source_layer"]
                       else f"{r['source_layer']} → {r['target_layer']}") for r in rows]
    height = 0.9 + sum(0.22 + 0.13 * n.count("\n") for n in names)
    fig, (ax,) = _figure(7.6, max(height, 1.8))
    positive = [r["rel_l2"] for r in rows if r["rel_l2"] > 0] + ([threshold] if threshold else [])
    lo, hi = min(positive, default=1e-6), max(positive, default=1.0)
    floor = lo / 10  # a log axis has no zero: an exact match sits on its left edge, drawn hollow and labelled
    values = [r["rel_l2"] if r["rel_l2"] > 0 else floor for r in rows]
    ys = list(range(len(rows)))
    labels = [layer_label(r, threshold, named_by_static_diff) for r in rows]
    colours = [STATUS_COLOURS.get(label, "#333") for label in labels]
    exact = [r["rel_l2"] <= 0 for r in rows]
    ax.scatter([v for v, e in zip(values, exact) if not e], [y for y, e in zip(ys, exact) if not e],
               c=[c for c, e in zip(colours, exact) if not e], s=28, zorder=3)
    ax.scatter([v for v, e in zip(values, exact) if e], [y for y, e in zip(ys, exact) if e], facecolors="none",
               edgecolors=[c for c, e in zip(colours, exact) if e], s=28, zorder=3)
    for y, value, row, label in zip(ys, values, rows, labels):
        text = "0: identical" if row["rel_l2"] <= 0 else f"{row['rel_l2']:.3g}"
        ax.annotate(f"{text} ({label})", (value, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(floor / 3, hi * 300)
    if threshold:
        ax.axvline(threshold, color="#d62728", linestyle="--", linewidth=1, label=f"threshold: diverged\nabove {threshold:g}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("relative L2 error of the layer's output vs the source (log scale, dimensionless)")
    ax.grid(axis="x", color="#eee", zorder=0)
    ax.set_title(title, loc="left")
    return _to_svg(fig, title)


@_draw
def paired_rounds(rounds: Sequence[str], before: list[float | None], after: list[float | None], ylabel: str,
                  title: str, percent: bool = False, labels: tuple[str, str] = ("before", "after")) -> str:
    """Two series per round as grouped bars from zero on a linear axis, each value printed above its bar."""
    import numpy as np

    fig, (ax,) = _figure(7.6, 2.6)
    x = np.arange(len(rounds))
    width = 0.38
    scale = 100.0 if percent else 1.0
    spec = ".1f" if percent else ".3g"
    for j, (name, values) in enumerate(zip(labels, (before, after))):
        heights = [np.nan if v is None else v * scale for v in values]
        bars = ax.bar(x + (j - 0.5) * width, heights, width * 0.95, label=name, color=COLOURS[j])
        ax.bar_label(bars, labels=[fmt(h if not np.isnan(h) else None, spec) + ("%" if percent and not np.isnan(h) else "")
                                   for h in heights], fontsize=8, padding=2)
    ax.set_xticks(x, rounds)
    ax.set_ylabel(ylabel)
    top = max((v * scale for v in before + after if v is not None), default=1.0)
    ax.set_ylim(0, 100 * 1.12 if percent else top * 1.18 or 1.0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.grid(axis="y", color="#eee", zorder=0)
    ax.set_axisbelow(True)
    ax.set_title(title, loc="left")
    return _to_svg(fig, title)


@_draw
def lines(title: str, x_label: str, y_label: str, xs: list[float], series: dict[str, list[float]],
          y_range: tuple[float, float] = (0.0, 1.0), percent: bool = True) -> str:
    """A line chart with markers and printed values: one line per series over shared x values."""
    fig, (ax,) = _figure(4.4, 3.0)
    scale = 100.0 if percent else 1.0
    for j, (name, ys) in enumerate(series.items()):
        points = [(x, y * scale) for x, y in zip(xs, ys) if y is not None]
        ax.plot(*zip(*points), marker="o", markersize=3.5, color=COLOURS[j % len(COLOURS)],
                linestyle=LINESTYLES[j % len(LINESTYLES)], label=name)
        for k, (x, y) in enumerate(points):
            ax.annotate(f"{y:.0f}" if percent else f"{y:.2g}", (x, y), xytext=(0, 4 + 7 * j), textcoords="offset points",
                        ha="center", fontsize=7, color=COLOURS[j % len(COLOURS)])
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_ylim(y_range[0] * scale, y_range[1] * scale * 1.15)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label + (" (%)" if percent else ""))
    ax.grid(color="#eee")
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    ax.set_title(title, loc="left")
    return _to_svg(fig, title)


@_draw
def reliability_diagram(title: str, bins: list[dict]) -> str:
    """Accuracy per confidence bin as bars against the diagonal of perfect calibration; the
    sample count of each non-empty bin printed on it."""
    fig, (ax,) = _figure(3.3, 3.1)
    for row in bins:
        if not row["count"]:
            continue
        width = row["upper"] - row["lower"]
        ax.bar(row["lower"], row["accuracy"], width * 0.95, align="edge", color=COLOURS[0])
        ax.plot([row["lower"], row["lower"] + width * 0.95], [row["confidence"]] * 2, color=COLOURS[3], linewidth=2)
        ax.annotate(str(row["count"]), (row["lower"] + width / 2, row["accuracy"]), xytext=(0, 2), textcoords="offset points",
                    ha="center", fontsize=6)
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("confidence (max softmax probability)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(title, loc="left", fontsize=8)
    return _to_svg(fig, title)


@_draw
def step_histograms(title: str, x_label: str, edges: list[float], counts: dict[str, list[int]]) -> str:
    """Several histograms over the same bins as outlines, as shares of each model's samples."""
    import numpy as np

    fig, (ax,) = _figure(4.4, 2.8)
    for j, (name, values) in enumerate(counts.items()):
        total = max(sum(values), 1)
        shares = np.asarray(values, dtype=float) / total * 100
        ax.stairs(shares, edges, color=COLOURS[j % len(COLOURS)], linestyle=LINESTYLES[j % len(LINESTYLES)],
                  linewidth=1.5, label=f"{name} (n={total})")
    ax.set_xlabel(x_label)
    ax.set_ylabel("share of samples (%)")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(color="#eee")
    ax.set_title(title, loc="left")
    return _to_svg(fig, title)


@_draw
def heatmap_row(title: str, panels: list[tuple[str, list[list[float]], float, bool]]) -> str:
    """Several small maps side by side (caption, grid, scale, signed), one colour bar for the
    signed ones: red where the predicted class loses probability, blue where it gains."""
    import numpy as np

    fig, axes = _figure(1.25 * len(panels) + 0.8, 1.7, len(panels))
    image = None
    for ax, (caption, grid, scale, signed) in zip(axes, panels):
        values = np.asarray(grid, dtype=float)
        if signed:
            image = ax.imshow(values, cmap="RdBu_r", vmin=-scale, vmax=scale)
        else:
            ax.imshow(values, cmap="gray", vmin=0, vmax=scale)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(caption, fontsize=7, fontweight="normal")
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), shrink=0.8, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        bar.set_label("Δ probability", fontsize=6)
    fig.suptitle(title, fontsize=8, x=0.01, ha="left")
    return _to_svg(fig, title)
