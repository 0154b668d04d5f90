"""Small inline-SVG charts for the self-contained HTML page: no scripts, no network assets."""

from __future__ import annotations

import html
import math

COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2"]
DASHES = ["", "7 3", "2 3", "9 3 2 3"]  # so that identical series (a perfect repair) stay visible


def _dash(j: int) -> str:
    return f' stroke-dasharray="{DASHES[j % len(DASHES)]}"' if DASHES[j % len(DASHES)] else ""


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{html.escape(title)}">' + "".join(body) + "</svg>")


def _legend(names: list[str], x: float, y: float, step: float = 110) -> list[str]:
    return [f'<rect x="{x + j * step:.0f}" y="{y}" width="10" height="10" fill="{COLOURS[j % len(COLOURS)]}"/>'
            f'<text x="{x + j * step + 14:.0f}" y="{y + 9}" font-size="11">{html.escape(name)}</text>'
            for j, name in enumerate(names)]


def bars(title: str, labels: list[str], series: dict[str, list[float | None]], log_scale: bool = False) -> str:
    """A grouped bar chart, labels rotated under the axis (room left for long layer names)."""
    width, height, left, right = 760, 220, 150, 20
    values = [v for vs in series.values() for v in vs if v is not None]
    if not values:
        return f"<h3>{html.escape(title)}</h3><p>no data</p>"
    transform = (lambda v: math.log10(max(v, 1e-9)) + 9) if log_scale else (lambda v: v)
    top = max(transform(v) for v in values) or 1.0
    group = (width - left - right) / max(len(labels), 1)
    bar = group / (len(series) + 1)
    parts = [f'<line x1="{left}" y1="{height}" x2="{width - right}" y2="{height}" stroke="#888"/>']
    for i, label in enumerate(labels):
        x0 = left + i * group
        for j, (name, vs) in enumerate(series.items()):
            v = vs[i] if i < len(vs) else None
            if v is None:
                continue
            h = (height - 20) * transform(v) / top
            parts.append(f'<rect x="{x0 + j * bar:.1f}" y="{height - h:.1f}" width="{bar * 0.9:.1f}" height="{h:.1f}" '
                         f'fill="{COLOURS[j % len(COLOURS)]}"><title>{html.escape(name)} {html.escape(label)}: {v:.4g}</title></rect>')
        parts.append(f'<text x="{x0 + group / 2:.1f}" y="{height + 14}" font-size="10" text-anchor="end" '
                     f'transform="rotate(-30 {x0 + group / 2:.1f} {height + 14})">{html.escape(label[-28:])}</text>')
    parts += _legend(list(series), left, 2, 140)
    return f"<h3>{html.escape(title)}</h3>" + _svg(width, height + 80, title, parts)


def lines(title: str, x_label: str, y_label: str, xs: list[float], series: dict[str, list[float]],
          y_range: tuple[float, float] = (0.0, 1.0), width: int = 360, height: int = 220) -> str:
    """A line chart with markers: one line per series over shared x values."""
    left, bottom, top_pad, right = 44, 36, 24, 12
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    lo_x, hi_x = min(xs), max(xs)
    span_x = (hi_x - lo_x) or 1.0
    lo_y, hi_y = y_range

    def px(x: float) -> float:
        return left + (x - lo_x) / span_x * plot_w

    def py(y: float) -> float:
        return top_pad + plot_h - (y - lo_y) / ((hi_y - lo_y) or 1.0) * plot_h

    parts = _axes(left, top_pad, plot_w, plot_h, x_label, y_label, lo_y, hi_y)
    parts += [f'<text x="{px(x):.1f}" y="{top_pad + plot_h + 12}" font-size="9" text-anchor="middle">{x:g}</text>' for x in xs]
    for j, (name, ys) in enumerate(series.items()):
        colour = COLOURS[j % len(COLOURS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys) if y is not None)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{_dash(j)}/>')
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"><title>{html.escape(name)} '
                  f'{x:g}: {y:.3g}</title></circle>' for x, y in zip(xs, ys) if y is not None]
    parts += _legend(list(series), left, 4, 90)
    return _figure(title, _svg(width, height, title, parts))


def reliability_diagram(title: str, bins: list[dict], width: int = 240, height: int = 240) -> str:
    """Accuracy per confidence bin as bars against the diagonal of perfect calibration."""
    left, bottom, top_pad, right = 40, 34, 10, 10
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    parts = _axes(left, top_pad, plot_w, plot_h, "confidence", "accuracy", 0.0, 1.0)
    parts.append(f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad}" stroke="#999" stroke-dasharray="4 3"/>')
    for row in bins:
        if not row["count"]:
            continue
        x = left + row["lower"] * plot_w
        w = (row["upper"] - row["lower"]) * plot_w
        h = row["accuracy"] * plot_h
        gap_top = top_pad + plot_h - row["confidence"] * plot_h
        parts.append(f'<rect x="{x:.1f}" y="{top_pad + plot_h - h:.1f}" width="{w * 0.95:.1f}" height="{h:.1f}" fill="{COLOURS[0]}">'
                     f'<title>({row["lower"]:.2f}, {row["upper"]:.2f}]: {row["count"]} samples, accuracy {row["accuracy"]:.2f}, '
                     f'confidence {row["confidence"]:.2f}</title></rect>')
        parts.append(f'<line x1="{x:.1f}" y1="{gap_top:.1f}" x2="{x + w * 0.95:.1f}" y2="{gap_top:.1f}" stroke="{COLOURS[3]}" stroke-width="2"/>')
    return _figure(title, _svg(width, height, title, parts))


def step_histograms(title: str, x_label: str, edges: list[float], counts: dict[str, list[int]],
                    width: int = 360, height: int = 200) -> str:
    """Several histograms over the same bins as outlines, normalised to shares."""
    left, bottom, top_pad, right = 44, 34, 24, 12
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    shares = {name: [c / max(sum(cs), 1) for c in cs] for name, cs in counts.items()}
    peak = max((max(s) for s in shares.values() if s), default=1.0) or 1.0
    parts = _axes(left, top_pad, plot_w, plot_h, x_label, "share", 0.0, peak)
    lo, hi = edges[0], edges[-1]
    for j, (name, values) in enumerate(shares.items()):
        path = [f"M{left},{top_pad + plot_h}"]
        for k, value in enumerate(values):
            x0 = left + (edges[k] - lo) / ((hi - lo) or 1) * plot_w
            x1 = left + (edges[k + 1] - lo) / ((hi - lo) or 1) * plot_w
            y = top_pad + plot_h - value / peak * plot_h
            path.append(f"L{x0:.1f},{y:.1f}L{x1:.1f},{y:.1f}")
        path.append(f"L{left + plot_w},{top_pad + plot_h}")
        parts.append(f'<path d="{"".join(path)}" fill="none" stroke="{COLOURS[j % len(COLOURS)]}" stroke-width="1.6"{_dash(j)}/>')
    parts += [f'<text x="{left}" y="{top_pad + plot_h + 12}" font-size="9">{lo:g}</text>',
              f'<text x="{left + plot_w}" y="{top_pad + plot_h + 12}" font-size="9" text-anchor="end">{hi:.3g}</text>']
    parts += _legend(list(counts), left, 4, 90)
    return _figure(title, _svg(width, height, title, parts))


def heatmap(title: str, grid: list[list[float]], scale: float | None = None, signed: bool = True, cell: int = 14) -> str:
    """A grid of values as coloured cells: red positive, blue negative (grey scale when unsigned)."""
    rows, cols = len(grid), len(grid[0]) if grid else 0
    peak = scale or max((abs(v) for row in grid for v in row), default=1.0) or 1.0
    parts = []
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            parts.append(f'<rect x="{j * cell}" y="{i * cell}" width="{cell}" height="{cell}" fill="{_colour(value, peak, signed)}">'
                         f'<title>({i}, {j}): {value:.3g}</title></rect>')
    return _figure(title, _svg(cols * cell, rows * cell, title, parts), small=True)


def _colour(value: float, peak: float, signed: bool) -> str:
    t = max(-1.0, min(1.0, value / peak))
    if not signed:
        level = int(255 * max(t, 0.0))
        return f"rgb({level},{level},{level})"
    if t >= 0:
        fade = int(255 * (1 - t))
        return f"rgb(255,{fade},{fade})"
    fade = int(255 * (1 + t))
    return f"rgb({fade},{fade},255)"


def _axes(left: float, top: float, width: float, height: float, x_label: str, y_label: str, lo: float, hi: float) -> list[str]:
    return [
        f'<line x1="{left}" y1="{top + height}" x2="{left + width}" y2="{top + height}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + height}" stroke="#888"/>',
        f'<text x="{left + width / 2:.0f}" y="{top + height + 26}" font-size="10" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="10" y="{top + height / 2:.0f}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 10 {top + height / 2:.0f})">{html.escape(y_label)}</text>',
        f'<text x="{left - 4}" y="{top + height}" font-size="9" text-anchor="end">{lo:.2g}</text>',
        f'<text x="{left - 4}" y="{top + 8}" font-size="9" text-anchor="end">{hi:.2g}</text>',
    ]


def _figure(title: str, svg: str, small: bool = False) -> str:
    size = "font-size:10px" if small else "font-size:12px"
    return f'<figure class="chart"><figcaption style="{size}">{html.escape(title)}</figcaption>{svg}</figure>'
