"""The LiteRT-from-PyTorch route: a .pt2 converted by litert-torch (fp32 and PT2E int8), run by
LiteRT's interpreter, checked against its source through the real CLI in the contained worker."""

from __future__ import annotations

import importlib.util
import os
import json

import numpy as np
import pytest

from convrepair.sidecar import read_sidecar

pytestmark = pytest.mark.slow

if importlib.util.find_spec("litert_torch") is None:  # installed with --no-deps by `make install` (docs/ROUTES.md)
    if os.environ.get("CI", "").lower() == "true":  # CI installs it: the route must be tested there
        raise RuntimeError("CI=true but litert-torch is not installed (make install puts it in with --no-deps)")
    pytest.skip("litert-torch is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory):
    """The fixture CNN converted once to both targets, validated on the test split."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("litert")
    result = run_cli("convert", fixtures_dir / "torch_cnn.pt2", "--to", "litert", "--to", "litert-int8",
                     "--calibration", fixtures_dir / "digits_train_nchw.npz",
                     "--data", fixtures_dir / "digits_test_nchw.npz", "--out-dir", out, "--json", out / "convert.json")
    return result, out


def test_the_route_is_a_plugin_through_the_entry_point_door():
    from convrepair.plugins import default_registry

    registry = default_registry()
    record = next(r for r in registry.records if r.plugin is not None and r.plugin.name == "litert")
    assert record.entry_point == "litert = convrepair_plugins.litert"
    assert record.plugin.unavailable_reason() is None
    assert registry.converters["torch-to-litert"].target == "litert"
    assert registry.converters["torch-to-litert-int8"].target == "litert-int8" and "litert" in registry.formats


def test_pt2_converts_to_litert_fp32_and_int8_and_both_check_equivalent(converted):
    result, out = converted
    assert result.code == 0, result.stderr
    conversions = {c["route"][-1]: c for c in json.loads((out / "convert.json").read_text())["conversions"]}
    fp32, int8 = conversions["torch-to-litert"], conversions["torch-to-litert-int8"]
    for conversion in (fp32, int8):
        assert conversion["validation"]["verdict"] == "equivalent" and conversion["validation"]["n"] == 400
        assert conversion["validation"]["label_agreement"] == 1.0
    assert fp32["validation"]["max_abs"] < 1e-4  # fp32: float noise only
    assert read_sidecar(out / "torch_cnn.tflite").precision == "fp32"
    sidecar = read_sidecar(out / "torch_cnn.litert-int8.tflite")
    assert sidecar.precision == "int8" and sidecar.steps[-1].details["calibration_samples"] >= 100
    assert "START" not in result.stdout and "LiteRT-Torch Convert" not in result.stdout  # its progress tree stays off


def test_runner_runs_a_larger_batch_in_pieces_of_the_fixed_batch(converted, fixtures_dir):
    from convrepair.model import model_ref
    from convrepair.plugins import default_registry

    _, out = converted
    registry = default_registry()
    x = np.load(fixtures_dir / "digits_test_nchw.npz")["x"][:7]
    with registry.load(model_ref(out / "torch_cnn.tflite", registry)) as runner:
        assert runner.capacity == 1
        (got,) = runner.run({runner.inputs[0].name: x}).values()
    with registry.load(model_ref(fixtures_dir / "torch_cnn.pt2", registry), device="cpu") as source:
        (want,) = source.run({source.inputs[0].name: x}).values()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_int8_without_calibration_is_refused_with_what_to_pass(fixtures_dir, tmp_path):
    from conftest import run_cli

    result = run_cli("convert", fixtures_dir / "torch_cnn.pt2", "--to", "litert-int8", "--out-dir", tmp_path)
    assert result.code == 2 and "--calibration" in result.stderr
