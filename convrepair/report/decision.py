"""What a reviewer decides from, gathered from one signed log: which model and files, the held-out
result before and after, the options and the choice, and the review status. Plain dicts of
numbers and names; the HTML page (and anything else) formats them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convrepair.report.summary import available, kept
from convrepair.report.terminal import human_size, synthetic_data


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


def _file(ref: dict[str, Any] | None, precision: str | None = None) -> dict[str, Any] | None:
    if not ref:
        return None
    return {"name": Path(str(ref.get("path", ""))).name, "path": ref.get("path"), "format": ref.get("format"),
            "sha256": ref.get("sha256"), "precision": precision or f"not recorded in the log ({ref.get('format') or 'this format'}: the repair measures the mix of the target and its repair)"}


def mix_text(mix: dict[str, Any] | None) -> str | None:
    """A precision mix as a reader weighs it: parameters by element type with counts and shares
    (a few fp32 parameters in an int8 model are what a fallback costs), and the quantized ops."""
    if not mix or not mix.get("parameters"):
        return None
    params = mix["parameters"]
    total = max(sum(params.values()), 1)
    kinds = ", ".join(f"{kind} {count:,} ({count / total:.1%})" for kind, count in sorted(params.items(), key=lambda kv: -kv[1]))
    return f"parameters {kinds}; {mix.get('quantized_ops', 0)} quantized op(s)"


def cost_view(cost: dict[str, Any] | None) -> dict[str, Any] | None:
    """The repair's price, target → repaired: size, latency and precision mix (the log's `cost`)."""
    if not cost:
        return None
    before, after = cost.get("before") or {}, cost.get("after") or {}

    def size(value):
        return "n/a" if value is None else human_size(int(value))

    def ms(value):
        return "n/a" if value is None else f"{value:.3g} ms"

    ratio = cost.get("latency_ratio")
    return {"size": f"{size(before.get('bytes'))} → {size(after.get('bytes'))}"
                    + (f" ({cost['size_ratio']:.2f}×)" if cost.get("size_ratio") is not None else ""),
            "latency": f"{ms(before.get('latency_ms'))} → {ms(after.get('latency_ms'))} per batch of {cost.get('latency_batch', '?')}"
                       + (f" ({ratio:.2f}×)" if ratio is not None else ""),
            "precision_before": mix_text(before.get("precision")) or "not recorded",
            "precision_after": mix_text(after.get("precision")) or "not recorded",
            "kept_fp32": list(cost.get("layers_kept_fp32") or [])}


def held_out_bound(repair: dict[str, Any]) -> dict[str, Any] | None:
    """The bound the verdict rests on: one-sided 95% Clopper–Pearson upper bound on the flip rate
    over the held-out split, before and after, against the largest flip rate allowed."""
    held = repair.get("held_out") or {}
    if held.get("flip_rate_upper_bound_before") is None:
        return None
    return {"before": held["flip_rate_upper_bound_before"], "after": held.get("flip_rate_upper_bound_after"), "n": held.get("n"),
            "failing_before": len(held.get("failing_before") or []),
            "failing_after": None if held.get("failing_after") is None else len(held["failing_after"]),
            "broken": len(held.get("broken") or []), "max_flip_rate": repair.get("max_flip_rate"),
            "samples_needed": repair.get("samples_needed")}


def lens_findings(lenses: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the lenses flag, for the card: the repaired model against the source (the reference),
    and what it was compared with besides (the target), with the notes that explain a gap."""
    if not lenses:
        return None
    robustness = available(lenses, "robustness")
    order = list(lenses.get("roles") or lenses.get("models") or [])
    if robustness is None:
        return {"flags": [], "notes": [], "against": None, "roles": order}
    compared = robustness.get("compared") or {}
    against = (f"{next(r for r, w in compared.items() if w == 'reference')} (the reference) and "
               + ", ".join(r for r, w in compared.items() if w != "reference")) if compared else None
    return {"flags": list(robustness.get("flags") or []), "notes": list(robustness.get("notes") or []), "against": against,
            "roles": order}


def check_caveats(before: dict[str, Any]) -> dict[str, Any]:
    """What the check itself warns of: noise instead of data, latent faults the samples did not
    reveal, outputs that depend on the batch, and the guard's reasons."""
    batch = before.get("batch_dependent") or {}
    guard = before.get("guard") or {}
    return {"data": before.get("data"), "noise": synthetic_data(before.get("data")),
            "latent": list(before.get("latent") or []),
            "batch_dependent": batch if batch.get("detected") else None,
            "guard": list(guard.get("reasons") or before.get("inconclusive_reasons") or [])}


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
        "source": None, "target": None, "output": None,
        "route": route(conversion),
        "precision": (conversion or {}).get("precision"),
        "review": review_status(log_path),
        "files": predicate.get("files", []),
        "mode": repair.get("mode"),
        # every key the page asks for exists (the template is strict about undefined names)
        "model_repair": None, "search_before": None, "held_before": None, "held_after": None, "splits": {}, "fault": None,
        "first_divergent": None, "attempts": [], "choice": None,
        "verdict_reason": repair.get("verdict_reason"), "bound": held_out_bound(repair), "cost": cost_view(repair.get("cost")),
        "lenses": lens_findings(predicate.get("lenses")), "caveats": check_caveats(repair.get("check_before") or {}),
    }
    mixes = (repair.get("cost") or {})
    precision = (conversion or {}).get("precision")
    target_mix = mix_text((mixes.get("before") or {}).get("precision"))
    card["source"] = _file(repair.get("source") or repair.get("model"), mix_text((mixes.get("source") or {}).get("precision")))
    card["target"] = _file(repair.get("target"), "; ".join(x for x in (precision, target_mix) if x) or None)
    card["output"] = _file(repair.get("output"), mix_text((mixes.get("after") or {}).get("precision")))
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
