"""One self-contained HTML page for a repair log: no network assets, plots as inline SVG."""

from __future__ import annotations

import html
import json
from typing import Any


def _bars(title: str, labels: list[str], series: dict[str, list[float | None]], log_scale: bool = False) -> str:
    """A grouped bar chart as inline SVG."""
    import math

    width, height, pad = 720, 220, 40
    colours = ["#4c78a8", "#f58518", "#54a24b", "#e45756"]
    values = [v for vs in series.values() for v in vs if v is not None]
    if not values:
        return f"<h3>{html.escape(title)}</h3><p>no data</p>"
    transform = (lambda v: math.log10(max(v, 1e-9)) + 9) if log_scale else (lambda v: v)
    top = max(transform(v) for v in values) or 1.0
    group = (width - 2 * pad) / max(len(labels), 1)
    bar = group / (len(series) + 1)
    parts = [f'<svg width="{width}" height="{height + 60}" role="img" aria-label="{html.escape(title)}">']
    parts.append(f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#888"/>')
    for i, label in enumerate(labels):
        x0 = pad + i * group
        for j, (name, vs) in enumerate(series.items()):
            v = vs[i] if i < len(vs) else None
            if v is None:
                continue
            h = (height - 20) * transform(v) / top
            parts.append(f'<rect x="{x0 + j * bar:.1f}" y="{height - h:.1f}" width="{bar * 0.9:.1f}" height="{h:.1f}" '
                         f'fill="{colours[j % len(colours)]}"><title>{html.escape(name)} {html.escape(label)}: {v:.4g}</title></rect>')
        parts.append(f'<text x="{x0 + group / 2:.1f}" y="{height + 14}" font-size="10" text-anchor="end" '
                     f'transform="rotate(-30 {x0 + group / 2:.1f} {height + 14})">{html.escape(label[-28:])}</text>')
    for j, name in enumerate(series):
        parts.append(f'<rect x="{pad + j * 140}" y="2" width="10" height="10" fill="{colours[j % len(colours)]}"/>'
                     f'<text x="{pad + j * 140 + 14}" y="11" font-size="11">{html.escape(name)}</text>')
    parts.append("</svg>")
    return f"<h3>{html.escape(title)}</h3>" + "".join(parts)


def log_page(statement: dict[str, Any], envelope: dict[str, Any]) -> str:
    predicate = statement["predicate"]
    repair = predicate["repair"]
    sections = [f"<h1>convrepair repair log</h1><p>verdict <b>{html.escape(str(predicate['verdict']))}</b>; job "
                f"{html.escape(predicate['job']['id'])}; signed by <code>{html.escape(envelope['signatures'][0]['keyid'][:16])}…</code></p>"]
    before = repair.get("check_before") or {}
    loc = before.get("localization") or {}
    if loc.get("fault"):
        sections.append(f"<h2>Fault</h2><p><b>{html.escape(loc['fault']['type'])}</b> at "
                        f"<code>{html.escape((loc.get('first_divergent') or {}).get('target_layer', ''))}</code>: "
                        f"{html.escape(loc['fault']['detail'])}</p>")
    if loc.get("layers"):
        layers = loc["layers"]
        sections.append(_bars("Per-layer divergence before repair (relative L2, log scale)",
                              [r["source_layer"] for r in layers], {"rel L2": [r["rel_l2"] for r in layers]}, log_scale=True))
    after = repair.get("check_after") or {}
    rounds_before = [r["label_agreement"] for r in before.get("rounds", [])]
    rounds_after = [r["label_agreement"] for r in after.get("rounds", [])]
    if rounds_before:
        sections.append(_bars("Label agreement per round (search half before, held-out half after)",
                              [f"round {i}" for i in range(max(len(rounds_before), len(rounds_after)))],
                              {"before": rounds_before, "after": rounds_after}))
        sections.append(_bars("Largest output change per round (max |Δ|, log scale)",
                              [f"round {i}" for i in range(max(len(rounds_before), len(rounds_after)))],
                              {"before": [r["max_abs"] for r in before.get("rounds", [])],
                               "after": [r["max_abs"] for r in after.get("rounds", [])]}, log_scale=True))
    rows = "".join(
        f"<tr><td>{html.escape(a['kind'])}</td><td>{'yes' if a['accepted'] else 'no'}</td>"
        f"<td><code>{html.escape(str((a.get('patch') or {}).get('location', '')))}</code></td><td>{html.escape(a['reason'])}</td></tr>"
        for a in repair.get("attempts", [])
    )
    sections.append(f"<h2>Attempts</h2><table><tr><th>kind</th><th>kept</th><th>where</th><th>why</th></tr>{rows}</table>")
    files = "".join(f"<tr><td>{html.escape(f['role'])}</td><td>{html.escape(f['name'])}</td><td><code>{f['sha256']}</code></td></tr>"
                    for f in predicate["files"])
    sections.append(f"<h2>Files</h2><table><tr><th>role</th><th>file</th><th>sha256</th></tr>{files}</table>")
    sections.append(f"<details><summary>full log (JSON)</summary><pre>{html.escape(json.dumps(statement, indent=2))}</pre></details>")
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
             "pre{font-size:11px;background:#f6f6f6;padding:1em;overflow:auto}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>convrepair repair log</title><style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
