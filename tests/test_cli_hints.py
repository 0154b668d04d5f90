"""The `next:` hints: one line per outcome, naming the user's own paths, silent with -q / --json -."""

from __future__ import annotations

from pathlib import Path

import pytest

from convrepair.cli import hints
from convrepair.cli.app import state

SRC, TGT, DATA = Path("m.keras"), Path("m.onnx"), Path("d.npz")


@pytest.fixture(autouse=True)
def _loud():
    quiet = state["quiet"]
    state["quiet"] = False
    yield
    state["quiet"] = quiet


def _check(capsys, payload, data=DATA, strict=False, golden=False, json_target=None) -> str:
    hints.after_check(payload, SRC, TGT, data, strict, golden, json_target)
    return capsys.readouterr().out


@pytest.mark.parametrize("payload, data, strict, expected", [
    ({"verdict": "equivalent"}, None, False, "next: convrepair check m.keras m.onnx --data YOUR_DATA.npz"),
    ({"verdict": "equivalent"}, DATA, False, "next: convrepair check m.keras m.onnx --data d.npz --strict"),
    ({"verdict": "equivalent"}, DATA, True, "next: deploy m.onnx"),
    ({"verdict": "equivalent", "latent": [{"node": "conv"}]}, DATA, True,
     "next: convrepair repair m.keras m.onnx --data d.npz --out m-repaired.onnx"),
    ({"verdict": "discrepant", "localization": {"fault": {"node": "conv2"}}}, DATA, False,
     "next: convrepair repair m.keras m.onnx --data d.npz --out m-repaired.onnx --sign-key keys/service.key"),
    ({"verdict": "inconclusive", "samples": 150}, DATA, False, "next: convrepair check m.keras m.onnx --data d.npz --samples 300"),
])
def test_check_hint_follows_the_verdict(capsys, payload, data, strict, expected):
    out = _check(capsys, payload, data, strict)
    assert out.count("next: ") == 1 and out.startswith(expected), out


def test_discrepant_hint_names_the_fault_and_quotes_paths(capsys):
    hints.after_check({"verdict": "discrepant", "localization": {"fault": {"node": "conv2"}}},
                      Path("my model.keras"), TGT, DATA, False, False, None)
    out = capsys.readouterr().out
    assert "'my model.keras'" in out and "at conv2" in out


def test_golden_source_is_never_handed_to_repair(capsys):
    out = _check(capsys, {"verdict": "discrepant"}, golden=True)
    assert out.startswith("next: convrepair check SOURCE_MODEL m.onnx") and "--out" not in out


@pytest.mark.parametrize("payload, log, expected", [
    ({"verdict": "repaired"}, Path("f.onnx.log.dsse.json"), "next: convrepair show f.onnx.log.dsse.json --html page.html"),
    ({"verdict": "repaired"}, None, "next: repeat with --sign-key keys/service.key"),
    ({"verdict": "already_equivalent"}, None, "next: deploy the target as it is"),
    ({"verdict": "unproven", "samples_needed": 299, "held_out": {"n": 24}}, None,
     "next: repeat with --data holding at least 748 samples"),
    ({"verdict": "not_repaired"}, None, "next: convrepair check SOURCE TARGET"),
])
def test_repair_hint_follows_the_verdict(capsys, payload, log, expected):
    hints.after_repair(payload, log, Path("f.onnx"), None)
    out = capsys.readouterr().out
    assert out.count("next: ") == 1 and out.startswith(expected), out


def test_approve_hint_is_the_pipelines_verify(capsys):
    hints.after_approve(Path("f.log"), "trust.json", None)
    assert capsys.readouterr().out.startswith("next: convrepair verify f.log --trust trust.json --require-approval")


def test_hints_are_silent_with_quiet_and_json_on_stdout(capsys):
    _check(capsys, {"verdict": "equivalent"}, json_target="-")
    hints.after_convert(SRC, TGT, None, "-")
    assert capsys.readouterr().out == ""
    state["quiet"] = True
    hints.after_repair({"verdict": "repaired"}, None, TGT, None)
    assert capsys.readouterr().out == ""
    state["quiet"] = False
    hints.after_convert(SRC, TGT, None, None)
    assert capsys.readouterr().out.startswith("next: convrepair check m.keras m.onnx --data YOUR_DATA.npz")
