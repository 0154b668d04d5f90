"""One self-contained HTML page for a repair log: no network assets, plots as inline SVG."""

from __future__ import annotations

import html
import json
from typing import Any

from convrepair.report import svg
from convrepair.report.lenses_html import lens_sections
from convrepair.report.summary import kept


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
        sections.append(svg.bars("Per-layer divergence before repair (relative L2, log scale)",
                              [r["source_layer"] for r in layers], {"rel L2": [r["rel_l2"] for r in layers]}, log_scale=True))
    after = repair.get("check_after") or {}
    rounds_before = [r["label_agreement"] for r in before.get("rounds", [])]
    rounds_after = [r["label_agreement"] for r in after.get("rounds", [])]
    if rounds_before:
        sections.append(svg.bars("Label agreement per round (search half before, held-out half after)",
                              [f"round {i}" for i in range(max(len(rounds_before), len(rounds_after)))],
                              {"before": rounds_before, "after": rounds_after}))
        sections.append(svg.bars("Largest output change per round (max |Δ|, log scale)",
                              [f"round {i}" for i in range(max(len(rounds_before), len(rounds_after)))],
                              {"before": [r["max_abs"] for r in before.get("rounds", [])],
                               "after": [r["max_abs"] for r in after.get("rounds", [])]}, log_scale=True))
    rows = "".join(
        f"<tr><td>{html.escape(a['kind'])}</td><td>{kept(a)}</td>"
        f"<td><code>{html.escape(str((a.get('patch') or {}).get('location', '')))}</code></td><td>{html.escape(a['reason'])}</td></tr>"
        for a in repair.get("attempts", [])
    )
    sections.append(f"<h2>Attempts</h2><table><tr><th>kind</th><th>kept</th><th>where</th><th>why</th></tr>{rows}</table>")
    sections.append(lens_sections(predicate.get("lenses")))
    files = "".join(f"<tr><td>{html.escape(f['role'])}</td><td>{html.escape(f['name'])}</td><td><code>{f['sha256']}</code></td></tr>"
                    for f in predicate["files"])
    sections.append(f"<h2>Files</h2><table><tr><th>role</th><th>file</th><th>sha256</th></tr>{files}</table>")
    sections.append(f"<details><summary>full log (JSON)</summary><pre>{html.escape(json.dumps(statement, indent=2))}</pre></details>")
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
             "pre{font-size:11px;background:#f6f6f6;padding:1em;overflow:auto}"
             ".row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-end}figure.chart{margin:4px}"
             ".tag{font-size:11px;width:90px;color:#555}li.flag{color:#b00}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>convrepair repair log</title><style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
