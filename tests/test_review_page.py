"""The review page cannot mislead (issue 22): lenses compare the repaired model with the source
(the reference) and the target, and their flags reach the decision card; the per-layer chart
calls a layer diverged only right of the threshold line it draws; every model's precision mix,
the repair's cost, the verdict's reason and the held-out bound are on the card; noise data,
latent faults and batch dependence are said there. Fast: hand-made logs, no models run."""

from __future__ import annotations

import re

import pytest

from convrepair.lenses.robustness import AttackPoint, Robustness, compare_repaired
from convrepair.report.html import log_page
from convrepair.report.svg import layer_divergence, layer_label
from test_report_html import visible_text

MIX_BEFORE = {"parameters": {"int8": 9740, "int32": 70, "float32": 19, "uint8": 11}, "quantized_ops": 34, "casts": 0, "nodes": 48}
MIX_AFTER = {"parameters": {"int8": 9667, "float32": 96, "int32": 61, "uint8": 10}, "quantized_ops": 28, "casts": 0, "nodes": 43}


def _check(verdict: str, flips: list[int], agreement: float, data: str = "digits.npz", **extra) -> dict:
    return {"verdict": verdict, "label_agreement": agreement, "flips": flips, "samples": 100, "data": data,
            "disagreement_upper_bound": 0.05, "accuracy": {"source": 0.98, "target": 0.9}, "localization": None,
            "rounds": [{"seed": 0, "n": 100, "label_agreement": agreement, "max_abs": 1.5}], **extra}


def _repair(**changes) -> dict:
    repair = {
        "source": {"path": "/m/torch_cnn.pt2", "format": "pt2", "sha256": "a" * 64},
        "target": {"path": "/m/torch_cnn.int8.onnx", "format": "onnx", "sha256": "b" * 64},
        "output": {"path": "/m/patched.onnx", "format": "onnx", "sha256": "c" * 64},
        "verdict": "improved", "verdict_reason": "4 of 719 held-out samples fail after repair (51 before, 3 newly broken)",
        "max_flip_rate": 0.01, "samples_needed": None,
        "held_out": {"n": 719, "failing_before": list(range(51)), "failing_after": [1, 2, 3, 4], "broken": [2, 3, 4],
                     "flip_rate_upper_bound_before": 0.0887275, "flip_rate_upper_bound_after": 0.0126853,
                     "bound": "one-sided 95% Clopper–Pearson upper bound on the flip rate over 719 distinct samples"},
        "cost": {"before": {"bytes": 19446, "latency_ms": 0.235, "precision": MIX_BEFORE},
                 "after": {"bytes": 18587, "latency_ms": 0.196, "precision": MIX_AFTER},
                 "bytes_change": -859, "size_ratio": 0.9558, "latency_ratio": 0.834, "layers_kept_fp32": ["/Conv"],
                 "latency_batch": 64},
        "check_before": _check("discrepant", [1, 2], 0.93),
        "check_before_held_out": _check("discrepant", list(range(51)), 0.929),
        "check_after": _check("discrepant", [1, 2, 3, 4], 0.994),
        "splits": {"search": 719, "selection": 359, "held_out": 719},
        "attempts": [{"kind": "precision_fallback", "accepted": True, "applied": True, "reason": "kept /Conv in fp32",
                      "patch": {"location": "/Conv"}, "label_agreement": 0.994}],
        # one option only: the card still shows what the repair costs
        "choice": {"policy": "exact", "why": "the only option", "chosen": "precision_fallback",
                   "target": {"bytes": 19446, "inference_ms": 0.67, "held_out_flips": 26},
                   "options": [{"kind": "precision_fallback", "held_out_label_agreement": 0.994, "held_out_flips": 2,
                                "bytes": 18587, "inference_ms": 0.87, "chosen": True}]},
    }
    repair.update(changes)
    return repair


def _page(repair: dict, lenses: dict | None = None, precision: str | None = "int8") -> str:
    predicate = {"repair": repair, "verdict": repair["verdict"], "files": [], "lenses": lenses,
                 "conversion": {"precision": precision, "steps": []} if precision else None,
                 "job": {"id": "job-1", "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00"},
                 "tool_versions": {"convrepair": "0.1.0"}}
    return log_page({"predicate": predicate}, {"signatures": [{"keyid": "ab" * 32}]})


def _card(page: str) -> str:
    """The visible text of the decision card alone."""
    return visible_text(page.split('id="decision"', 1)[1].split("<h2>Evidence</h2>", 1)[0])


# --- 1. lenses: the repaired model against the source (the reference) and the target -------------

def _robustness(repaired: float, source: float, target: float) -> Robustness:
    point = AttackPoint("pgd", 0.1, {}, {"source": source, "target": target, "repaired": repaired})
    return Robustness("source", "keras", "labels", 256, (0.0, 1.0), 10, "0.25·ε",
                      {"source": 0.98, "target": 0.9, "repaired": 0.98}, [point])


def test_a_repair_level_with_the_source_is_not_flagged_for_falling_below_the_target():
    """The attacks are white-box on the source (and on a repair that restores it) and only transfer
    to the target: the old code flagged "repaired is less robust than target" here."""
    flags, notes = compare_repaired(_robustness(repaired=0.40, source=0.40, target=0.62), "repaired", "source", ["target"])
    assert flags == []
    assert len(notes) == 1 and "level with source" in notes[0] and "white-box" in notes[0] and "transfer" in notes[0]


def test_a_repair_below_the_source_is_flagged_against_the_reference():
    flags, notes = compare_repaired(_robustness(repaired=0.20, source=0.40, target=0.30), "repaired", "source", ["target"])
    assert any("less robust than source" in f and "(the reference)" in f for f in flags)
    assert any("less robust than target" in f for f in flags) and notes == []


def _lenses(flags: list[str], notes: list[str]) -> dict:
    return {"roles": ["source", "target", "repaired"], "samples": 719, "data": "digits.npz", "seconds": {"robustness": 1.2},
            "models": {r: {"path": f"{r}.onnx", "format": "onnx"} for r in ("source", "target", "repaired")},
            "robustness": {"crafted_on": "source", "gradients_via": "keras", "reference": "labels", "n": 256,
                           "input_range": [0.0, 1.0], "pgd_steps": 10, "pgd_step": "0.25·ε",
                           "clean_accuracy": {"source": 0.98, "target": 0.9, "repaired": 0.98},
                           "points": [{"attack": "pgd", "epsilon": 0.1, "success": {},
                                       "accuracy": {"source": 0.2, "target": 0.3, "repaired": 0.1}}],
                           "flags": flags, "notes": notes, "compared": {"source": "reference", "target": "compared"}}}


def test_lens_flags_reach_the_decision_card():
    flag = "repaired is less robust than source under pgd ε=0.1: accuracy under attack 10% vs 20% (the reference)"
    card = _card(_page(_repair(), _lenses([flag], [])))
    assert "Lens flags" in card and flag in card
    quiet = _card(_page(_repair(), _lenses([], ["repaired is less robust than target …, level with source"])))
    assert "No lens flags: under attack, the repaired model is not clearly less robust than source (the reference) and target" in quiet
    assert "level with source" in quiet


# --- 2. the per-layer chart agrees with its own threshold line -----------------------------------

LAYERS = [  # localization names a first layer below the threshold (its first tenfold jump), then carries
    {"source_layer": "conv1", "target_layer": "conv1", "kind": "conv", "rel_l2": 2e-6, "max_abs": 1e-5, "cosine": 1.0, "status": "ok"},
    {"source_layer": "conv2", "target_layer": "conv2", "kind": "conv", "rel_l2": 4e-4, "max_abs": 0.01, "cosine": 1.0, "status": "diverged"},
    {"source_layer": "bn", "target_layer": "bn", "kind": "conv", "rel_l2": 0.03, "max_abs": 0.2, "cosine": 0.99, "status": "fused"},
    {"source_layer": "fc", "target_layer": "fc", "kind": "dense", "rel_l2": 0.5, "max_abs": 3.0, "cosine": 0.9, "status": "carried"},
    {"source_layer": "out", "target_layer": "out", "kind": "dense", "rel_l2": 0.0, "max_abs": 0.0, "cosine": 1.0, "status": "ok"},
]


def _labelled_points(chart: str) -> list[tuple[float, str]]:
    """(value, status) of every dot's printed label in the SVG (`0.5 (carried)`)."""
    text = " ".join(re.sub(r"<[^>]+>", " ", chart).split())
    return [(float(v), s) for v, s in re.findall(r"(\d[\d.e+-]*) \(([a-z ]+)\)", text)]


@pytest.mark.parametrize("threshold", [1e-3, 0.1])
def test_every_point_labelled_diverged_lies_beyond_the_threshold_line(threshold):
    chart = layer_divergence(LAYERS, threshold, "t")
    points = _labelled_points(chart)
    assert len(points) == 4  # the identical layer prints "0: identical"
    assert all(value > threshold for value, status in points if status == "diverged"), points
    drawn = re.findall(r"threshold: diverged\s*</?[^>]*>?\s*above ([\d.e+-]+)|above ([\d.e+-]+)", chart)
    assert any(float(a or b) == threshold for a, b in drawn)
    assert ("first jump" in {s for _, s in points}) == (threshold > 4e-4)  # named below the line: said so
    assert layer_label(LAYERS[1], threshold) == ("first jump" if threshold > 4e-4 else "diverged")


def test_the_page_explains_fused_and_its_table_agrees_with_the_chart():
    check = _check("discrepant", [1, 2], 0.93, localization={"layers": LAYERS, "fault": {"type": "unknown", "detail": "x"},
                                                              "first_divergent": None})
    page = _page(_repair(check_before=check))
    text = visible_text(page)
    assert "Fused: the target computes this layer together with the next one" in text
    assert "First jump: below the threshold" in text
    table = page.split("per-layer numbers before repair", 1)[1].split("</details>", 1)[0]
    assert "<td>first jump</td>" in table and "<td>diverged</td>" not in table  # threshold 0.1 for int8


# --- 3. precision mix, cost, verdict reason, held-out bound --------------------------------------

def test_the_card_shows_every_model_s_precision_the_cost_the_reason_and_the_one_sided_bound():
    card = _card(_page(_repair()))
    output = card.split("output patched.onnx (onnx)", 1)[1].split("route", 1)[0]
    assert "int8 9,667 (98.3%)" in output and "float32 96 (1.0%)" in output and "28 quantized op(s)" in output
    target = card.split("target torch_cnn.int8.onnx (onnx)", 1)[1]
    assert target.split("output")[0].count("int8 9,740 (99.0%)") == 1
    assert "not recorded in the log (pt2" in card.split("target torch_cnn.int8.onnx")[0]  # the source: said, not left blank
    for words in ("Cost of the repair", "19.0 KB → 18.2 KB (0.96×)", "0.235 ms → 0.196 ms per batch of 64 (0.83×)",
                  "kept in fp32 /Conv", "Why improved: 4 of 719 held-out samples fail after repair (51 before, 3 newly broken)",
                  "one-sided 95% upper bound on the flip rate 8.87% → 1.27%", "repaired needs ≤ 1.00%"):
        assert words in card, words


def test_cost_is_on_the_card_without_a_choice_of_options():
    card = _card(_page(_repair(choice=None)))
    assert "19.0 KB → 18.2 KB" in card and "precision after parameters int8 9,667 (98.3%)" in card


# --- 4. what the check warns of --------------------------------------------------------------

def test_noise_data_latent_faults_and_batch_dependence_are_on_the_card():
    before = _check("discrepant", [1], 0.99, data="uniform[0.0, 1.0]",
                    latent=[{"node": "Conv_3", "type": "weights", "detail": "bias zeroed", "effect": {"measured": False}}],
                    batch_dependent={"detected": True, "samples": 16, "max_rel_change": 0.02, "label_changes": 1, "limit": 1e-4})
    card = re.sub(r"\s+([:,])", r"\1", _card(_page(_repair(check_before=before))))
    assert "noise data: the check ran on uniform[0.0, 1.0] random inputs (no --data)" in card
    assert "latent weights at Conv_3: bias zeroed" in card
    assert "batch-dependent outputs" in card and "1 label change(s)" in card
    clean = _card(_page(_repair()))
    assert "noise data" not in clean and "latent" not in clean and "batch-dependent" not in clean
