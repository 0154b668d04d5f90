"""Sidecars record the input range measured on the data a model was converted with, or none
(issue 18 item 6): never an assumed [0, 1] that a later check on the same data trips over.

A 16 → 384 ONNX embedder built in code, converted to fp16 through the real converter; seconds.
"""

from __future__ import annotations

import json

import numpy as np
from test_engine_judgement import embedder

from convrepair.check import CheckConfig, run_check
from convrepair.convert import convert
from convrepair.plugins import default_registry
from convrepair.sidecar import SCHEMA, Sidecar, read_sidecar


def _signed(path, n=200):
    """Features spanning [-1, 1]: what a model normalised to [-1, 1] takes, outside the old default."""
    x = np.random.default_rng(0).uniform(-1, 1, (n, 16)).astype(np.float32)
    x[0, 0], x[1, 1] = -1.0, 1.0
    np.savez(path, x=x)
    return path


def test_convert_with_data_records_its_range_and_a_check_on_the_same_data_is_not_held_by_the_guard(tmp_path, cli):
    """Old: `convert --data` over [-1, 1] wrote input_range [0, 1]; a check that used the converted
    model as its source on that same data was `inconclusive` ("outside the input range")."""
    source, data = embedder(tmp_path / "embed.onnx"), _signed(tmp_path / "signed.npz")
    out = tmp_path / "embed.fp16.onnx"
    result = cli("convert", source, "--to", "onnx-fp16", "--out", out, "--data", data, "--json", tmp_path / "c.json")
    assert result.code == 0, result.stderr
    assert read_sidecar(out).preprocessing.input_range == (-1.0, 1.0)
    assert json.loads((tmp_path / "embed.fp16.onnx.convrepair.json").read_text())["preprocessing"]["input_range"] == [-1.0, 1.0]
    report = run_check(default_registry(), out, out, CheckConfig(data=data, localize=False))
    assert report.verdict == "equivalent", (report.reasons, report.inconclusive)
    assert not any("input range" in reason for reason in report.inconclusive)
    assert report.to_json()["guard"]["notes"] == []  # a range was recorded and checked


def test_convert_without_data_records_no_range_and_the_judge_says_so(tmp_path):
    registry = default_registry()
    source, data = embedder(tmp_path / "embed.onnx"), _signed(tmp_path / "signed.npz")
    converted = convert(registry, source, "onnx-fp16", out_dir=tmp_path / "out")
    sidecar = read_sidecar(converted.output.path)
    assert sidecar.preprocessing.input_range is None
    assert json.loads(converted.sidecar.read_text())["preprocessing"]["input_range"] is None
    report = run_check(registry, converted.output.path, converted.output.path, CheckConfig(data=data, localize=False))
    assert report.verdict == "equivalent" and report.inconclusive == []  # no recorded range: no range guard
    notes = report.to_json()["guard"]["notes"]
    assert len(notes) == 1 and notes[0].startswith("no recorded input range") and "[-1, 1]" in notes[0]


def test_a_converted_model_converted_again_keeps_the_measured_range(tmp_path):
    registry = default_registry()
    source, data = embedder(tmp_path / "embed.onnx"), _signed(tmp_path / "signed.npz")
    first = convert(registry, source, "onnx-fp16", out=tmp_path / "a.onnx", data=data)
    assert read_sidecar(first.output.path).preprocessing.input_range == (-1.0, 1.0)
    second = convert(registry, first.output.path, "onnx", out=tmp_path / "b.onnx")
    assert read_sidecar(second.output.path).preprocessing.input_range == (-1.0, 1.0)


def test_old_sidecars_with_the_assumed_range_still_load_and_none_round_trips():
    old = {"schema": SCHEMA, "preprocessing": {"scale": 1.0, "offset": 0.0, "channel_order": None, "input_range": [0, 1]}}
    assert Sidecar.from_json(old).preprocessing.input_range == (0.0, 1.0)
    fresh = Sidecar()
    assert fresh.preprocessing.input_range is None
    assert Sidecar.from_json(fresh.to_json()).preprocessing.input_range is None


def test_noise_data_without_a_recorded_range_says_its_range_is_assumed(tmp_path):
    source = embedder(tmp_path / "embed.onnx")
    report = run_check(default_registry(), source, source, CheckConfig(rounds=1, samples=20, localize=False))
    assert report.data.startswith("uniform[0.0, 1.0]")
    assert "no recorded input range, so [0, 1] is assumed" in report.data
