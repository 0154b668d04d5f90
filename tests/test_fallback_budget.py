"""The precision fallback stops at `--budget-seconds` and says so (issue 18): each of its steps
re-converts and checks the model, and on the zoo's int8 MobileNetV2 the repair spent 12 min to
give up. The synthetic RGB conv net converted to fp16 (its rounding judged with atol=1e-6), as in
test_engine_repair; seconds."""

from __future__ import annotations

import pytest

import synthetic
from convrepair.convert import convert
from convrepair.plugins import default_registry
from convrepair.repair import RepairConfig, run_repair

SETTINGS = dict(atol=1e-6, rtol=0.0, rounds=2, samples=50, strategy="restore", max_fp32_layers=2)


@pytest.fixture(scope="module")
def fp16(tmp_path_factory):
    out = tmp_path_factory.mktemp("rgb")
    source = synthetic.build_rgb_model(out / "rgb.onnx")
    return source, convert(default_registry(), source, "onnx-fp16", out_dir=out / "fp16").output.path


def _fallback(report):
    return [a for a in report.attempts if a.kind == "precision_fallback"]


def test_a_spent_budget_stops_the_fallback_and_the_log_says_where(fp16, tmp_path):
    """Old: the fallback measured every candidate layer and kept layers cumulatively whatever the
    budget; nothing in the log said time had run out."""
    source, target = fp16
    report = run_repair(default_registry(), source, target, tmp_path / "fixed.onnx",
                        RepairConfig(budget_seconds=0.0, **SETTINGS))
    assert report.to_json()["check_before"]["localization"]["fault"]["type"] == "precision"
    fallback = _fallback(report)
    assert len(fallback) == 1, [a.to_json() for a in fallback]  # no layer re-converted past the budget
    stopped = fallback[0]
    assert stopped.accepted is False and stopped.applied is False and stopped.cost["stopped_by_budget"] is True
    assert stopped.reason.startswith("stopped at --budget-seconds 0 after"), stopped.reason
    assert stopped.cost["done"] == [] and stopped.cost["not_tried"], stopped.cost
    assert "not tried: " + ", ".join(stopped.cost["not_tried"]) in stopped.reason
    assert stopped.to_json()["cost"]["stopped_by_budget"] is True  # in the repair log
    assert report.verdict in ("not_repaired", "unproven"), report.verdict  # nothing was changed: never repaired


def test_a_budget_that_allows_it_runs_the_fallback_without_a_stop(fp16, tmp_path):
    source, target = fp16
    report = run_repair(default_registry(), source, target, tmp_path / "fixed.onnx",
                        RepairConfig(budget_seconds=300.0, **SETTINGS))
    fallback = _fallback(report)
    assert any((a.cost or {}).get("layers_kept_fp32") for a in fallback), [a.to_json() for a in fallback]
    assert not any((a.cost or {}).get("stopped_by_budget") for a in fallback)
