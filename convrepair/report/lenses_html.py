"""The lenses for the HTML page: reliability diagrams, confidence and entropy histograms,
robustness curves over ε and occlusion maps, side by side for every model the lenses looked
through. Builds what `templates/lenses.html.j2` shows; the charts come from report/svg.py."""

from __future__ import annotations

from typing import Any

from convrepair.report import svg
from convrepair.report.summary import available, roles, summary_rows, unavailable


def lens_view(lenses: dict[str, Any] | None) -> dict[str, Any] | None:
    """Everything the lenses template needs; charts are SVG strings (trusted: we drew them)."""
    from markupsafe import Markup

    if not lenses:
        return None
    rows = summary_rows(lenses)
    missing = unavailable(lenses)
    view: dict[str, Any] = {
        "samples": lenses["samples"], "data": lenses.get("data", ""), "seconds": list(lenses.get("seconds", {}).items()),
        "rows": rows if len(missing) < len(present(lenses)) else [], "unavailable": list(missing.items()),
        "pgd_epsilon": next((r["pgd_epsilon"] for r in rows if r["pgd_epsilon"] is not None), None),
    }
    view["calibration"] = [Markup(c) for c in _calibration(lenses)]
    uncertainty = _uncertainty(lenses)
    if uncertainty:
        uncertainty["charts"] = [Markup(c) for c in uncertainty["charts"]]
    view["uncertainty"] = uncertainty
    robustness = _robustness(lenses)
    if robustness:
        robustness["charts"] = [Markup(c) for c in robustness["charts"]]
    view["robustness"] = robustness
    occlusion = _occlusion(lenses)
    if occlusion:
        occlusion["charts"] = [Markup(c) for c in occlusion["charts"]]
    view["occlusion"] = occlusion
    return view


def present(lenses: dict[str, Any]) -> list[str]:
    return [name for name in ("calibration", "uncertainty", "robustness", "occlusion") if name in lenses]


def _calibration(lenses: dict[str, Any]) -> list[str]:
    result = available(lenses, "calibration")
    if not result:
        return []
    return [svg.reliability_diagram(f"{role}: ECE {cal.get('ece_before', cal['ece']):.4f} → {cal['ece_after']:.4f} at T={cal['temperature']:.3g}"
                                    if cal.get("ece_after") is not None else f"{role}: ECE {cal['ece']:.4f}", cal["bins"])
            for role, cal in _ordered(lenses, result)]


def _uncertainty(lenses: dict[str, Any]) -> dict[str, Any] | None:
    result = available(lenses, "uncertainty")
    if not result:
        return None
    models = dict(_ordered(lenses, result["models"]))
    first = next(iter(models.values()))
    charts = [svg.step_histograms("Max softmax probability", "confidence", first["confidence_histogram"]["edges"],
                                  {r: m["confidence_histogram"]["counts"] for r, m in models.items()}),
              svg.step_histograms("Predictive entropy", "entropy (nats)", first["entropy_histogram"]["edges"],
                                  {r: m["entropy_histogram"]["counts"] for r, m in models.items()})]
    text = []
    for role, shift in _ordered(lenses, result["shift"]):
        text.append(f"{role}: KS D={shift['confidence_d']:.3f} (p={shift['confidence_p']:.2g}) on confidence, "
                    f"D={shift['entropy_d']:.3f} (p={shift['entropy_p']:.2g}) on entropy; {len(shift['crossed_tau'])} sample(s) "
                    f"crossed τ={result['tau']:g}")
    ensemble = result.get("ensemble")
    if ensemble:
        text.append(f"over {', '.join(ensemble['models'])}: variation ratio {ensemble['variation_ratio_mean']:.3f} "
                    f"({ensemble['disagreeing_samples']} samples with disagreeing labels); total entropy {ensemble['total_entropy']:.3f} = "
                    f"aleatoric {ensemble['aleatoric']:.3f} + epistemic {ensemble['epistemic']:.3f} nats")
    return {"charts": charts, "text": text}


def _robustness(lenses: dict[str, Any]) -> dict[str, Any] | None:
    result = available(lenses, "robustness")
    if not result:
        return None
    order = roles(lenses)
    charts = []
    for attack in ("fgsm", "pgd"):
        points = sorted((p for p in result["points"] if p["attack"] == attack), key=lambda p: p["epsilon"])
        if not points:
            continue
        xs = [0.0] + [p["epsilon"] for p in points]
        series = {role: [result["clean_accuracy"][role]] + [p["accuracy"][role] for p in points] for role in order}
        charts.append(svg.lines(f"{attack.upper()}: accuracy under attack", "ε (L∞, share of the input range)", "accuracy", xs, series))
    table = [{"attack": "clean", "epsilon": "0", "accuracy": [result["clean_accuracy"][r] for r in order]}]
    table += [{"attack": p["attack"], "epsilon": f"{p['epsilon']:g}", "accuracy": [p["accuracy"][r] for r in order]}
              for p in sorted(result["points"], key=lambda p: (p["attack"], p["epsilon"]))]
    return {**{k: result[k] for k in ("crafted_on", "gradients_via", "n", "input_range", "pgd_steps", "pgd_step", "reference")},
            "charts": charts, "roles": order, "table": table, "flags": result.get("flags", []), "notes": result.get("notes", []),
            "compared": list((result.get("compared") or {}).items())}


def _occlusion(lenses: dict[str, Any]) -> dict[str, Any] | None:
    result = available(lenses, "occlusion")
    if not result:
        return None
    reference = roles(lenses)[0]
    charts = []
    for sample in result["samples"]:
        peak = max((abs(v) for grid in sample["maps"].values() for row in grid for v in row), default=1.0) or 1.0
        panels = [("input", sample["image"], 1.0, False)]
        panels += [(f"{role} (label {sample['labels'][role]})", grid, peak, True) for role, grid in _ordered(lenses, sample["maps"])]
        panels += [(f"{role} − {reference}", grid, peak, True) for role, grid in _ordered(lenses, sample["difference"])]
        tag = "label changed" if sample["changed"] else "label unchanged"
        charts.append(svg.heatmap_row(f"sample #{sample['index']}: {tag}", panels))
    return {"patch": result["patch"], "stride": result["stride"], "fill": f"{result['fill']:g}", "charts": charts}


def _ordered(lenses: dict[str, Any], by_role: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(role, by_role[role]) for role in roles(lenses) if role in by_role]
