"""The lenses as HTML: reliability diagrams, confidence and entropy histograms, robustness curves
over ε and occlusion maps, side by side for every model the lenses looked through."""

from __future__ import annotations

import html
from typing import Any

from convrepair.report import svg
from convrepair.report.summary import available, roles, summary_rows, unavailable


def _num(value: Any, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def lens_sections(lenses: dict[str, Any] | None) -> str:
    if not lenses:
        return ""
    parts = [f"<h2>Reliability lenses</h2><p>{lenses['samples']} held-out samples from "
             f"<code>{html.escape(str(lenses.get('data', '')))}</code>; cost "
             + ", ".join(f"{html.escape(k)} {v:.2f} s" for k, v in lenses.get("seconds", {}).items()) + "</p>"]
    header = ("model", "accuracy", "ECE", "T", "ECE → after T (same samples)", "mean conf.", "mean entropy", "KS p (conf.)",
              "crossed τ", "PGD accuracy")
    rows = "".join(
        f"<tr><td>{html.escape(r['model'])}</td><td>{_num(r['accuracy'], '.2%')}</td><td>{_num(r['ece'], '.4f')}</td>"
        f"<td>{_num(r['temperature'], '.3g')}</td><td>{_num(r['ece_before'], '.4f')} → {_num(r['ece_after'], '.4f')}</td><td>{_num(r['mean_confidence'], '.3f')}</td>"
        f"<td>{_num(r['mean_entropy'], '.3f')}</td><td>{_num(r['confidence_shift_p'], '.2g')}</td><td>{_num(r['crossed_tau'], 'd')}</td>"
        f"<td>{_num(r['pgd_accuracy'], '.1%')}</td></tr>"
        for r in summary_rows(lenses)
    )
    if len(unavailable(lenses)) < len(roles_and_lenses(lenses)):
        parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + f"</tr>{rows}</table>")
    for name, reason in unavailable(lenses).items():
        parts.append(f"<p><b>{html.escape(name)}</b>: not computed — {html.escape(reason)}</p>")
    parts += [_calibration(lenses), _uncertainty(lenses), _robustness(lenses), _occlusion(lenses)]
    return "".join(parts)


def _calibration(lenses: dict[str, Any]) -> str:
    result = available(lenses, "calibration")
    if not result:
        return ""
    charts = "".join(svg.reliability_diagram(f"{role}: ECE {cal.get('ece_before', cal['ece']):.4f} → {cal['ece_after']:.4f} at T={cal['temperature']:.3g}",
                                             cal["bins"]) for role, cal in _ordered(lenses, result))
    return (f"<h3>Calibration</h3><p>Bars: accuracy per confidence bin; red ticks: the bin's mean confidence; dashed: "
            f"perfect calibration. T is fitted on the search half and ECE after it measured on the held-out half.</p>"
            f"<div class='row'>{charts}</div>")


def _uncertainty(lenses: dict[str, Any]) -> str:
    result = available(lenses, "uncertainty")
    if not result:
        return ""
    models = dict(_ordered(lenses, result["models"]))
    first = next(iter(models.values()))
    confidence = svg.step_histograms("max softmax probability", "confidence", first["confidence_histogram"]["edges"],
                                     {r: m["confidence_histogram"]["counts"] for r, m in models.items()})
    entropy = svg.step_histograms("predictive entropy", "entropy (nats)", first["entropy_histogram"]["edges"],
                                  {r: m["entropy_histogram"]["counts"] for r, m in models.items()})
    text = []
    for role, shift in _ordered(lenses, result["shift"]):
        text.append(f"{html.escape(role)}: KS D={shift['confidence_d']:.3f} (p={shift['confidence_p']:.2g}) on confidence, "
                    f"D={shift['entropy_d']:.3f} (p={shift['entropy_p']:.2g}) on entropy; {len(shift['crossed_tau'])} sample(s) "
                    f"crossed τ={result['tau']:g}")
    ensemble = result.get("ensemble")
    if ensemble:
        text.append(f"over {', '.join(map(html.escape, ensemble['models']))}: variation ratio {ensemble['variation_ratio_mean']:.3f} "
                    f"({ensemble['disagreeing_samples']} samples with disagreeing labels); total entropy {ensemble['total_entropy']:.3f} = "
                    f"aleatoric {ensemble['aleatoric']:.3f} + epistemic {ensemble['epistemic']:.3f}")
    return f"<h3>Uncertainty</h3><div class='row'>{confidence}{entropy}</div><ul>" + "".join(f"<li>{t}</li>" for t in text) + "</ul>"


def _robustness(lenses: dict[str, Any]) -> str:
    result = available(lenses, "robustness")
    if not result:
        return ""
    charts = []
    for attack in ("fgsm", "pgd"):
        points = sorted((p for p in result["points"] if p["attack"] == attack), key=lambda p: p["epsilon"])
        if not points:
            continue
        xs = [0.0] + [p["epsilon"] for p in points]
        series = {role: [result["clean_accuracy"][role]] + [p["accuracy"][role] for p in points] for role in roles(lenses)}
        charts.append(svg.lines(f"{attack.upper()}: accuracy under attack", "ε (L∞)", "accuracy", xs, series))
    flags = "".join(f"<li class='flag'>{html.escape(f)}</li>" for f in result.get("flags", []))
    return (f"<h3>Robustness</h3><p>Adversarial inputs crafted with the {html.escape(result['crafted_on'])}'s gradients "
            f"({html.escape(result['gradients_via'])}) on {result['n']} samples, clipped to {result['input_range']}; the same "
            f"inputs fed to every model (transfer). PGD: {result['pgd_steps']} steps of {html.escape(result['pgd_step'])}. "
            f"Reference: {html.escape(result['reference'])}.</p><div class='row'>{''.join(charts)}</div>"
            + (f"<ul>{flags}</ul>" if flags else "<p>No model is flagged as clearly less robust.</p>"))


def _occlusion(lenses: dict[str, Any]) -> str:
    result = available(lenses, "occlusion")
    if not result:
        return ""
    if not result["samples"]:
        return "<h3>Occlusion</h3><p>No samples to map.</p>"
    rows = []
    for sample in result["samples"]:
        peak = max((abs(v) for grid in sample["maps"].values() for row in grid for v in row), default=1.0) or 1.0
        cells = [svg.heatmap(f"#{sample['index']} input", sample["image"], 1.0, signed=False, cell=10)]
        reference = roles(lenses)[0]
        cells += [svg.heatmap(f"{role} (label {sample['labels'][role]})", grid, peak) for role, grid in _ordered(lenses, sample["maps"])]
        cells += [svg.heatmap(f"{role} − {reference}", grid, peak) for role, grid in _ordered(lenses, sample["difference"])]
        tag = "label changed" if sample["changed"] else "label unchanged"
        rows.append(f"<div class='row occlusion'><span class='tag'>{tag}</span>{''.join(cells)}</div>")
    return (f"<h3>Occlusion</h3><p>A {result['patch']}×{result['patch']} patch (stride {result['stride']}) set to "
            f"{result['fill']:g} slides over the input; red: the model's own predicted class loses probability there; "
            f"the difference maps show where the models rely on different regions.</p>" + "".join(rows))


def roles_and_lenses(lenses: dict[str, Any]) -> list[str]:
    return [name for name in ("calibration", "uncertainty", "robustness", "occlusion") if name in lenses]


def _ordered(lenses: dict[str, Any], by_role: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(role, by_role[role]) for role in roles(lenses) if role in by_role]
