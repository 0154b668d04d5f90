"""Self-contained HTML pages: one signed log for a reviewer (`show LOG --html`), and an index of
every log with its status and verdict (`review --html`). Jinja2 templates with autoescape; the
charts are inline SVG; no scripts, no network assets, so the file works offline."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from convrepair.report import svg
from convrepair.report.decision import decision_card
from convrepair.report.terminal import human_size
from convrepair.report.lenses_html import lens_view


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("convrepair.report", "templates"),
                      autoescape=select_autoescape(["j2", "html"], default_for_string=True, default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda value, digits=2: "n/a" if value is None else f"{value:.{digits}%}"
    env.filters["num"] = lambda value, spec=".3g": svg.fmt(value, spec)
    env.filters["size"] = lambda value: "n/a" if value is None else human_size(int(value))
    return env


def _rounds(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[list[str], list[dict], list[dict]] | None:
    """Rounds of the target and the repaired model on the held-out half, paired by seed: the
    same samples before and after (the check draws each round from its seed)."""
    if not before or not after:
        return None
    after_by_seed = {(r["seed"], r["n"]): r for r in after.get("rounds", [])}
    pairs = [(r, after_by_seed[(r["seed"], r["n"])]) for r in before.get("rounds", []) if (r["seed"], r["n"]) in after_by_seed]
    if not pairs:
        return None
    return [f"seed {b['seed']} (n={b['n']})" for b, _ in pairs], [b for b, _ in pairs], [a for _, a in pairs]


def _threshold(loc: dict[str, Any], precision: str | None) -> float | None:
    """The relative-L2 error above which localization calls a layer diverged."""
    evidence = (loc.get("fault") or {}).get("evidence") or {}
    if "threshold_rel_l2" in loc or "threshold_rel_l2" in evidence:
        return loc.get("threshold_rel_l2", evidence.get("threshold_rel_l2"))
    from convrepair.localize import DIVERGENCE

    return DIVERGENCE.get(precision or evidence.get("precision") or "fp32", DIVERGENCE["fp32"])


def _named_by_static_diff(loc: dict[str, Any]) -> bool:
    return "named by the static diff" in str((loc.get("fault") or {}).get("detail", ""))


def _evidence(repair: dict[str, Any], precision: str | None) -> list[dict[str, Any]]:
    from markupsafe import Markup

    charts = []
    loc = (repair.get("check_before") or {}).get("localization") or {}
    if loc.get("layers"):
        threshold = _threshold(loc, precision)
        static = _named_by_static_diff(loc)
        labels = {svg.layer_label(r, threshold, static) for r in loc["layers"] if r.get("rel_l2") is not None}
        meaning = " ".join(f"{label.capitalize()}: {svg.STATUS_MEANING[label]}." for label in svg.STATUS_MEANING
                           if label in labels or label == "fused")  # fused: always explained, the static diff marks it too
        charts.append({"svg": Markup(svg.layer_divergence(loc["layers"], threshold, "Per-layer divergence before repair (search half)",
                                                          static)),
                       "note": "Each dot is one aligned layer, coloured by status (hollow: identical, 0, which a log axis cannot "
                               "place); the dashed line is the threshold for this precision, and only a dot right of it is called "
                               f"diverged. {meaning} Log axis: compare the printed values."})
    paired = _rounds(repair.get("check_before_held_out"), repair.get("check_after"))
    if paired:
        names, before, after = paired
        labels = ("target as converted", "repaired")
        charts.append({"svg": Markup(svg.paired_rounds(names, [r["label_agreement"] for r in before], [r["label_agreement"] for r in after],
                                                       "label agreement with the source (%)", "Label agreement per round, held-out half",
                                                       percent=True, labels=labels)),
                       "note": "Before and after on the same held-out samples (rounds paired by seed); the search never saw them."})
        charts.append({"svg": Markup(svg.paired_rounds(names, [r["max_abs"] for r in before], [r["max_abs"] for r in after],
                                                       "max |Δ| of the outputs (output units)", "Largest output change per round, held-out half",
                                                       labels=labels)),
                       "note": "Linear axis from zero."})
    return charts


def log_page(statement: dict[str, Any], envelope: dict[str, Any], log_path: Path | None = None,
             verified: str | None = None) -> str:
    """The review page of one signed log: the decision card on top, then the evidence.
    `verified`: what checking the log's signatures and digests found (shown as is)."""
    predicate = statement["predicate"]
    repair = predicate["repair"]
    card = decision_card(statement, envelope, log_path)
    loc = (repair.get("check_before") or {}).get("localization") or {}
    threshold = _threshold(loc, card["precision"]) if loc.get("layers") else None
    layers = [{**row, "label": svg.layer_label(row, threshold, _named_by_static_diff(loc))} for row in loc.get("layers") or []]
    env = _environment()
    view = lens_view(predicate.get("lenses"))
    lenses = env.get_template("lenses.html.j2").render(l=view) if view else ""
    from markupsafe import Markup

    return env.get_template("log.html.j2").render(
        c=card, verified=verified, evidence=_evidence(repair, card["precision"]), layers=layers, lenses=Markup(lenses),
        statement_json=json.dumps(statement, indent=2, ensure_ascii=False)) + "\n"


def review_page(rows: list[dict[str, Any]], status: str, root: Path) -> str:
    """An index of the repair logs under ROOT: model, version, target, verdict, held-out agreement,
    review state, promoted copies, and a link to each log's page (row["page"], relative)."""
    counts = sorted(Counter(row["status"] for row in rows).items())
    defaults = {"target": None, "finished": "", "signed_by": "", "decided_by": None, "page": None, "reason": None,
                "model": None, "version": None, "target_name": None, "agreement_before": None, "agreement_after": None,
                "promoted": [], "path": None}
    rows = [{**defaults, **row} for row in rows]
    for row in rows:
        row["path"] = row["path"] or row["log"]
    return _environment().get_template("review.html.j2").render(rows=rows, status=status, root=str(root), counts=counts) + "\n"
