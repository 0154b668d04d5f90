"""Golden files: the source's outputs saved once, the target checked against them elsewhere."""

from __future__ import annotations

import json

import numpy as np

from conftest import run_cli
from convrepair.golden import MARKER, OUTPUT_PREFIX


def test_check_against_saved_outputs_needs_no_source(cli, work):
    source, data = work / "torch_cnn.pt2", work / "digits_test_nchw.npz"
    target = work / "torch_cnn.onnx"
    assert cli("convert", source, "--to", "onnx", "--out", target).code == 0
    golden, inputs = work / "golden.npz", work / "inputs.npz"
    saved = cli("check", source, target, "--data", data, "--rounds", "2", "--samples", "50",
                "--save-outputs", golden, "--save-inputs", inputs, "--json", work / "first.json")
    assert saved.code == 0, saved.stderr
    archive = np.load(golden, allow_pickle=False)
    header = json.loads(str(archive[MARKER]))
    assert header["source"]["format"] == "pt2" and len(archive["x"]) == len(np.load(data)["x"])
    assert np.array_equal(np.load(inputs)["x"], np.load(data)["x"])

    # The golden file stands in for the source (its own inputs are the default data) …
    again = cli("check", golden, target, "--rounds", "2", "--samples", "50", "--json", "-")
    assert again.code == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["source"]["format"] == "golden" and report["verdict"] == "equivalent"
    # … and Polygraphy's spelling works too.
    assert cli("check", target, "--load-outputs", golden, "--rounds", "1", "--samples", "20").code == 0

    # A changed golden output is a discrepancy: the comparison really uses the saved values.
    arrays = dict(np.load(golden, allow_pickle=False))
    name = next(key for key in arrays if key.startswith(OUTPUT_PREFIX))
    arrays[name] = arrays[name][::-1].copy()
    tampered = work / "tampered.npz"
    np.savez(tampered, **arrays)
    assert cli("check", tampered, target, "--rounds", "1", "--samples", "50").code == 1


def test_golden_file_refuses_inputs_it_has_no_outputs_for(cli, work):
    source = work / "torch_cnn.pt2"
    golden = work / "golden.npz"
    small = work / "small.npz"
    np.savez(small, x=np.load(work / "digits_test_nchw.npz")["x"][:30])
    assert cli("check", source, source, "--data", small, "--rounds", "1", "--samples", "10",
               "--save-outputs", golden).code == 0
    result = cli("check", golden, source, "--data", work / "digits_test_nchw.npz", "--rounds", "1", "--samples", "200")
    assert result.code == 2 and "golden.npz" in result.stderr and "no outputs for these inputs" in result.stderr


def test_convert_to_a_format_no_converter_writes_does_not_contradict_itself(fixtures_dir, tmp_path):
    # was: "unknown conversion target 'golden'; known: golden, …"
    result = run_cli("convert", fixtures_dir / "torch_cnn.pt2", "--to", "golden", "--out", tmp_path / "g.npz")
    assert result.code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "'golden' is a model format no converter writes" in line
    assert "golden" not in line.split("conversion targets:")[1]
