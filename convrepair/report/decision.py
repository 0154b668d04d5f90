"""What a reviewer decides from, gathered from one signed log: which model and files, the held-out
result before and after, the options and the choice, and the review status. Plain dicts of
numbers and names; the HTML page (and anything else) formats them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convrepair.report.summary import kept


def model_and_version(predicate: dict[str, Any], log_path: Path | None) -> tuple[str, str]:
    """A daemon's log lies at REGISTRY/<model>/<version>/convrepair/<target>/; a CLI run's model is
    named after its source file and has no registry version."""
    if log_path is not None:
        parts = Path(log_path).resolve().parts
        if len(parts) >= 5 and parts[-3] == "convrepair":
            return parts[-5], parts[-4]
    repair = predicate.get("repair") or {}
    source = repair.get("source") or repair.get("model") or {}
    return Path(str(source.get("path", "model"))).stem, "— (not from a registry)"


def route(conversion: dict[str, Any] | None) -> list[str]:
    """The conversion steps as `from → to (converter, tool)`."""
    if not conversion:
        return []
    return [f"{s.get('source_format', '?')} → {s.get('output_format', '?')} ({s.get('converter', '?')}"
            + (f", {s['tool']}" if s.get("tool") else "") + ")" for s in conversion.get("steps", [])]


def _file(ref: dict[str, Any] | None) -> dict[str, Any] | None:
    if not ref:
        return None
    return {"name": Path(str(ref.get("path", ""))).name, "path": ref.get("path"), "format": ref.get("format"),
            "sha256": ref.get("sha256")}


def _held(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    return {"verdict": report["verdict"], "label_agreement": report.get("label_agreement"), "flips": len(report.get("flips", [])),
            "bound": report.get("disagreement_upper_bound"), "samples": report.get("samples"),
            "accuracy": report.get("accuracy") or {}}


def review_status(log_path: Path | None) -> dict[str, Any]:
    """Pending, or the decision with who made it, and whether the decision chain is intact."""
    if log_path is None or not Path(log_path).exists():
        return {"status": "unknown (no log file given)", "decisions": [], "chain": None}
    from convrepair.ledger.decisions import decisions_dir, decisions_for, verify_chain

    decisions = decisions_for(log_path)
    chain = verify_chain(decisions_dir(log_path)) if decisions_dir(log_path).is_dir() else (True, "no decisions yet")
    return {"status": decisions[0].decision if decisions else "pending",
            "decisions": [{"decision": d.decision, "reviewer": d.reviewer, "time": d.time, "text": d.text, "file": d.path.name}
                          for d in decisions],
            "chain": {"ok": chain[0], "detail": chain[1]}}


def decision_card(statement: dict[str, Any], envelope: dict[str, Any], log_path: Path | None = None) -> dict[str, Any]:
    predicate = statement["predicate"]
    repair = predicate["repair"]
    model, version = model_and_version(predicate, log_path)
    conversion = predicate.get("conversion")
    card: dict[str, Any] = {
        "model": model,
        "version": version,
        "verdict": predicate.get("verdict"),
        "job": predicate["job"],
        "signed_by": envelope["signatures"][0]["keyid"],
        "tool_versions": predicate.get("tool_versions") or {},
        "source": _file(repair.get("source") or repair.get("model")),
        "target": _file(repair.get("target")),
        "output": _file(repair.get("output")),
        "route": route(conversion),
        "precision": (conversion or {}).get("precision"),
        "review": review_status(log_path),
        "files": predicate.get("files", []),
        "mode": repair.get("mode"),
        # every key the page asks for exists (the template is strict about undefined names)
        "model_repair": None, "search_before": None, "held_before": None, "held_after": None, "splits": {}, "fault": None,
        "first_divergent": None, "attempts": [], "choice": None,
    }
    if "check_before" not in repair:  # a model repaired against its own labels or version N-1
        card["model_repair"] = {"mode": repair.get("mode"), "previous": repair.get("previous"), "held_out": repair.get("held_out"),
                                "attempts": [{"kind": a["kind"], "reason": a["reason"]} for a in repair.get("attempts", [])]}
        return card
    before = repair["check_before"]
    loc = before.get("localization") or {}
    card["search_before"] = _held(before)
    card["held_before"] = _held(repair.get("check_before_held_out"))
    card["held_after"] = _held(repair.get("check_after"))
    card["splits"] = repair.get("splits") or {}
    card["fault"] = loc.get("fault")
    card["first_divergent"] = loc.get("first_divergent")
    card["attempts"] = [{"number": i, "kind": a["kind"], "where": (a.get("patch") or {}).get("location") or "",
                         "kept": kept(a), "label_agreement": a.get("label_agreement"), "reason": a["reason"],
                         "seconds": a.get("seconds"), "detail": (a.get("patch") or {}).get("detail")}
                        for i, a in enumerate(repair.get("attempts", []), 1)]
    choice = repair.get("choice")
    if choice:
        card["choice"] = {"policy": choice["policy"], "why": choice["why"], "chosen": choice["chosen"], "target": choice["target"],
                          "options": choice["options"]}
    return card
