"""`convrepair check`: sampled comparison, verdicts, and localization of injected faults."""

from __future__ import annotations

import json
import shutil

import pytest

import faults as fi
import synthetic
from convrepair.check import CheckConfig, run_check
from convrepair.compare import clopper_pearson_upper
from convrepair.convert import convert
from convrepair.errors import BadInput
from convrepair.plugins import default_registry
from convrepair.sidecar import read_sidecar, sidecar_path, write_sidecar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory):
    """Clean conversions of both fixtures, made once for the module."""
    out = tmp_path_factory.mktemp("converted")
    registry = default_registry()
    paths = {}
    for name, source, target in [
        ("keras_onnx", "keras_cnn.keras", "onnx"),
        ("keras_torch", "keras_cnn.keras", "torch"),
        ("torch_onnx", "torch_cnn.pt2", "onnx"),
        ("torch_fp16", "torch_cnn.pt2", "onnx-fp16"),
        ("torch_int8", "torch_cnn.pt2", "onnx-int8"),
        ("keras_tflite_int8", "keras_cnn.keras", "tflite-int8"),
    ]:
        paths[name] = convert(registry, fixtures_dir / source, target, out_dir=out / name).output.path
    paths["torch_onnx_dynamo"] = convert(
        registry, fixtures_dir / "torch_cnn.pt2", "onnx", out=out / "dynamo" / "torch_cnn.onnx", options={"exporter": "dynamo", "opset": "20"}
    ).output.path
    paths["torch_onnx_bn"] = convert(
        registry, fixtures_dir / "torch_cnn.pt2", "onnx", out=out / "bn" / "torch_cnn.onnx", options={"fold_constants": "false"}
    ).output.path
    return paths


def _check(source, target, data, **kwargs):
    return run_check(default_registry(), source, target, CheckConfig(data=data, **kwargs))


def _faulty(clean, tmp_path, fault, *args):
    out = tmp_path / f"faulty_{fault.__name__}.onnx"
    fi.inject(clean, out, fault, *args)
    sidecar = read_sidecar(clean)
    if sidecar is not None:
        write_sidecar(out, sidecar)
    return out


# --- clean paths: no false alarms --------------------------------------------------------------


@pytest.mark.parametrize("name", ["keras_onnx", "keras_torch"])
def test_clean_keras_paths_are_equivalent(fixtures_dir, converted, name):
    report = _check(fixtures_dir / "keras_cnn.keras", converted[name], fixtures_dir / "digits_test_nhwc.npz")
    assert report.verdict == "equivalent", report.reasons
    assert report.localization is None
    assert report.samples == 500 and len(report.rounds) == 5


@pytest.mark.parametrize("name", ["torch_onnx", "torch_fp16"])
def test_clean_torch_paths_are_equivalent(fixtures_dir, converted, name):
    report = _check(fixtures_dir / "torch_cnn.pt2", converted[name], fixtures_dir / "digits_test_nchw.npz")
    assert report.verdict == "equivalent", report.reasons
    if name == "torch_fp16":
        assert report.tolerance.enforced is False and report.pooled.max_abs > 0  # labels decide for fp16


def test_clean_path_with_localize_shows_no_divergent_layer(fixtures_dir, converted):
    report = _check(fixtures_dir / "keras_cnn.keras", converted["keras_onnx"], fixtures_dir / "digits_test_nhwc.npz", localize=True)
    loc = report.localization
    assert loc["first_divergent"] is None and loc["fault"] is None
    assert len(loc["layers"]) == 9 and all(row["status"] == "ok" for row in loc["layers"])


def test_rounds_are_seeded_and_reproducible(fixtures_dir, converted):
    data = fixtures_dir / "digits_test_nhwc.npz"
    a = _check(fixtures_dir / "keras_cnn.keras", converted["keras_onnx"], data, rounds=3, samples=50, seed=7).to_json()
    b = _check(fixtures_dir / "keras_cnn.keras", converted["keras_onnx"], data, rounds=3, samples=50, seed=7).to_json()
    assert [r["seed"] for r in a["rounds"]] == [7000, 7001, 7002]
    assert a["rounds"] == b["rounds"]


def test_without_data_inputs_are_drawn_from_the_declared_shapes(fixtures_dir, converted):
    report = _check(fixtures_dir / "keras_cnn.keras", converted["keras_onnx"], None, rounds=2, samples=20)
    assert report.verdict == "equivalent"
    assert report.to_json()["data"].startswith("uniform[0.0, 1.0]")


# --- injected faults: detected, localized, typed ------------------------------------------------

KERAS_FAULTS = [
    (fi.perturb_weights, ("conv2",), "weights", "conv2"),
    (fi.zero_bias, ("conv1",), "biases", "conv1"),
    (fi.asymmetric_pads, ("conv2",), "hyperparameter", "conv2"),
    (fi.swap_activation, ("conv2_1/Relu",), "hyperparameter", "conv2"),
    (fi.softmax_axis, (), "hyperparameter", "Softmax"),
    (fi.scale_input, (), "preprocessing", "conv1"),
    (fi.transpose_input, (), "input_layout", "conv1"),
    (fi.drop_activation, ("fc1_1/Relu",), "graph_structure", "logits"),
    (fi.flatten_without_transpose, (), "hyperparameter", "fc1"),
]


@pytest.mark.parametrize("fault, args, fault_type, layer", KERAS_FAULTS, ids=[f[0].__name__ for f in KERAS_FAULTS])
def test_injected_fault_in_keras_conversion_is_localized_and_typed(fixtures_dir, converted, tmp_path, fault, args, fault_type, layer):
    target = _faulty(converted["keras_onnx"], tmp_path, fault, *args)
    report = _check(fixtures_dir / "keras_cnn.keras", target, fixtures_dir / "digits_test_nhwc.npz")
    assert report.verdict == "discrepant"
    loc = report.localization
    assert loc is not None
    assert loc["fault"]["type"] == fault_type, loc["fault"]
    assert layer in loc["first_divergent"]["target_layer"], loc["first_divergent"]


TORCH_FAULTS = [
    (fi.perturb_weights, ("/Conv_1",), "weights", "/Conv_1"),
    (fi.zero_bias, ("/Conv_1",), "biases", "/Conv_1"),
    (fi.asymmetric_pads, ("/Conv_1",), "hyperparameter", "/Conv_1"),
]


@pytest.mark.parametrize("fault, args, fault_type, layer", TORCH_FAULTS, ids=[f[0].__name__ for f in TORCH_FAULTS])
def test_injected_fault_in_torch_conversion_is_localized_and_typed(fixtures_dir, converted, tmp_path, fault, args, fault_type, layer):
    target = _faulty(converted["torch_onnx"], tmp_path, fault, *args)
    report = _check(fixtures_dir / "torch_cnn.pt2", target, fixtures_dir / "digits_test_nchw.npz")
    assert report.verdict == "discrepant"
    loc = report.localization
    assert loc["fault"]["type"] == fault_type, loc["fault"]
    assert loc["first_divergent"]["target_layer"] == layer
    assert [d["target_layer"] for d in loc["static_diff"]] == [layer]  # the static diff agrees, nothing else
    if fault_type != "hyperparameter":
        assert loc["shadow"]["confirmed"] is True, loc["shadow"]


def _relu6_inputs(model_path, data_path):
    """The largest value reaching the ReLU6 per sample (its Clip's input), captured in the ONNX model."""
    import numpy as np
    import onnx

    from convrepair.data import load_npz
    from convrepair.localize import onnx_feeds
    from convrepair.localize.capture import capture
    from convrepair.model import TensorSpec

    model = onnx.load(str(model_path))
    clip = fi._node(model, "relu6", "Clip")
    value = model.graph.input[0]
    shape = tuple(d.dim_value or None for d in value.type.tensor_type.shape.dim)
    dataset = load_npz(data_path, [TensorSpec(value.name, shape, "float32", "NHWC")])
    reached = capture(model, [clip.input[0]], onnx_feeds(model, ["NHWC"], dataset))[clip.input[0]]
    return dataset, reached.reshape(len(reached), -1).max(axis=1)


def test_relu6_to_relu_that_never_clips_on_the_data_is_no_false_alarm(fixtures_dir, converted, tmp_path):
    """ReLU6 → ReLU changes nothing where activations stay below 6: equivalent, honestly.

    The property is constructed, not hoped for from training: the check runs on exactly the
    samples whose ReLU6 input stays below 6 (asserted), and the samples where it clips are
    shown to be caught."""
    import numpy as np

    target = _faulty(converted["keras_onnx"], tmp_path, fi.relu6_to_relu, "relu6")
    dataset, peak = _relu6_inputs(converted["keras_onnx"], fixtures_dir / "digits_test_nhwc.npz")
    below = np.nonzero(peak < 6.0)[0]
    assert len(below) >= 100 and peak[below].max() < 6.0  # the property the test needs, on the data it uses
    np.savez(tmp_path / "below6.npz", x=dataset.inputs[0][below], y=dataset.labels[below])
    report = _check(fixtures_dir / "keras_cnn.keras", target, tmp_path / "below6.npz")
    assert report.verdict == "equivalent", report.reasons
    assert report.pooled.max_abs > 0  # the outputs did move, within the source's own float noise
    clipping = np.nonzero(peak > 6.5)[0]
    if len(clipping):  # where ReLU6 does clip, dropping it is a real difference, and it is seen
        np.savez(tmp_path / "above6.npz", x=dataset.inputs[0][clipping], y=dataset.labels[clipping])
        assert _check(fixtures_dir / "keras_cnn.keras", target, tmp_path / "above6.npz", rounds=1).verdict == "discrepant"


def test_changed_batchnorm_epsilon_is_a_hyperparameter_fault(fixtures_dir, converted, tmp_path):
    """BatchNorm kept as a node (fold_constants=false); the source is exported the same way."""
    target = _faulty(converted["torch_onnx_bn"], tmp_path, fi.batchnorm_epsilon, 0.5)
    report = _check(fixtures_dir / "torch_cnn.pt2", target, fixtures_dir / "digits_test_nchw.npz")
    loc = report.localization
    assert report.verdict == "discrepant"
    assert loc["fault"]["type"] == "hyperparameter", loc["fault"]
    assert loc["fault"]["evidence"]["differences"][0]["attribute"] == "epsilon"
    assert loc["first_divergent"]["kind"] == "norm"
    assert loc["shadow"]["confirmed"] is True


def test_gelu_erf_to_tanh_is_a_hyperparameter_fault(fixtures_dir, converted, tmp_path):
    """The dynamo exporter writes a Gelu node; its `approximate` attribute changes numerics."""
    target = _faulty(converted["torch_onnx_dynamo"], tmp_path, fi.gelu_tanh)
    report = _check(fixtures_dir / "torch_cnn.pt2", target, fixtures_dir / "digits_test_nchw.npz")
    loc = report.localization
    assert report.verdict == "discrepant"
    assert loc["fault"]["type"] == "hyperparameter", loc["fault"]
    assert loc["fault"]["evidence"]["differences"][0]["attribute"] == "approximate"
    assert loc["first_divergent"]["kind"] == "act"


def test_tflite_weight_quantization_is_checked_and_typed_precision(fixtures_dir, converted):
    """Keras → TFLite with Optimize.DEFAULT (FetaFix's most common real case)."""
    data = fixtures_dir / "digits_test_nhwc.npz"
    labels = _check(fixtures_dir / "keras_cnn.keras", converted["keras_tflite_int8"], data)
    assert labels.tolerance.enforced is False  # int8: the labels decide
    strict = _check(fixtures_dir / "keras_cnn.keras", converted["keras_tflite_int8"], data, atol=1e-6)
    assert strict.verdict == "discrepant"
    loc = strict.localization
    assert loc["fault"]["type"] == "precision", loc["fault"]
    # quantized weights are within int8 rounding of the source's; the conv with BatchNorm folded in
    # stays in the static diff (a fault the next layer damps hides there), marked fused
    assert [d for d in loc["static_diff"] if not d["fused"]] == []
    assert "fused" in [row["status"] for row in loc["layers"]]  # TFLite folds BatchNorm into the conv


def test_int8_target_is_typed_precision(fixtures_dir, converted):
    report = _check(fixtures_dir / "torch_cnn.pt2", converted["torch_int8"], fixtures_dir / "digits_test_nchw.npz", atol=1e-6)
    assert report.verdict == "discrepant"
    assert report.localization["fault"]["type"] == "precision", report.localization["fault"]


def test_mismatched_output_count_is_bad_input(fixtures_dir, converted, tmp_path):
    target = _faulty(converted["keras_onnx"], tmp_path, fi.extra_output)
    with pytest.raises(BadInput, match="output counts differ"):
        _check(fixtures_dir / "keras_cnn.keras", target, fixtures_dir / "digits_test_nhwc.npz")


def test_data_that_does_not_fit_is_bad_input(fixtures_dir, converted):
    with pytest.raises(BadInput, match="expects"):
        _check(fixtures_dir / "keras_cnn.keras", converted["keras_onnx"], fixtures_dir / "digits_test_nchw.npz")


def test_clopper_pearson_bounds_match_the_beta_quantile():
    from scipy.stats import beta

    assert clopper_pearson_upper(0, 500) == pytest.approx(1 - 0.05 ** (1 / 500), rel=1e-9)
    assert clopper_pearson_upper(500, 500) == 1.0
    for k, n in [(1, 10), (5, 500), (37, 400), (99, 100)]:
        assert clopper_pearson_upper(k, n) == pytest.approx(beta.ppf(0.95, k + 1, n - k), rel=1e-6)


# --- the command contract -------------------------------------------------------------------------


def test_check_cli_contract(cli, fixtures_dir, converted, tmp_path):
    data = fixtures_dir / "digits_test_nhwc.npz"
    clean = cli("check", fixtures_dir / "keras_cnn.keras", converted["keras_onnx"], "--data", data, "--json", tmp_path / "ok.json")
    assert clean.code == 0, clean.stderr
    report = json.loads((tmp_path / "ok.json").read_text())
    assert report["schema"] == "convrepair.check/v1"
    for key in ("source", "target", "verdict", "samples", "rounds", "label_agreement", "flips",
                "disagreement_upper_bound", "accuracy", "localization"):
        assert key in report
    assert set(report["rounds"][0]) >= {"seed", "n", "label_agreement", "topk_agreement", "max_abs", "max_rel", "cosine_min"}
    assert "EQUIVALENT" in clean.stdout

    target = _faulty(converted["keras_onnx"], tmp_path, fi.zero_bias, "conv1")
    bad = cli("check", fixtures_dir / "keras_cnn.keras", target, "--data", data, "--json", tmp_path / "bad.json", "--top-k", "3")
    assert bad.code == 1, bad.stderr
    report = json.loads((tmp_path / "bad.json").read_text())
    assert report["verdict"] == "discrepant" and report["localization"]["fault"]["type"] == "biases"
    assert report["localization"]["layers"][0]["status"] == "diverged"
    assert "biases" in bad.stdout and "DISCREPANT" in bad.stdout

    unfit = cli("check", fixtures_dir / "keras_cnn.keras", converted["keras_onnx"], "--data", fixtures_dir / "digits_test_nchw.npz")
    assert unfit.code == 2 and len(unfit.stderr.strip().splitlines()) == 1


def test_fault_in_a_pytorch_module_is_localized_against_the_keras_source(fixtures_dir, converted, tmp_path):
    """Across frameworks: Keras source, PyTorch target (onnx2torch) with one bias zeroed in the module."""
    import torch

    program = torch.export.load(str(converted["keras_torch"]))
    name = next(k for k in program.state_dict if "conv2" in k and k.endswith(".bias"))
    with torch.no_grad():
        program.state_dict[name].zero_()
    target = tmp_path / "faulty.pt2"
    torch.export.save(program, str(target))
    shutil.copy(sidecar_path(converted["keras_torch"]), sidecar_path(target))
    report = _check(fixtures_dir / "keras_cnn.keras", target, fixtures_dir / "digits_test_nhwc.npz")
    loc = report.localization
    assert report.verdict == "discrepant"
    assert loc["fault"]["type"] == "biases", loc["fault"]
    assert "conv2" in loc["first_divergent"]["source_layer"]
    assert loc["shadow"]["confirmed"] is True
    assert [row["status"] for row in loc["layers"][:3]] == ["ok", "ok", "ok"]


SYNTHETIC_FAULTS = [
    (fi.reverse_channels, (), "preprocessing", "conv"),
    (fi.drop_pad, (), "graph_structure", "conv"),
    (fi.resize_mode, ("asymmetric",), "hyperparameter", "resize"),
]


@pytest.mark.parametrize("fault, args, fault_type, layer", SYNTHETIC_FAULTS, ids=[f[0].__name__ for f in SYNTHETIC_FAULTS])
def test_injected_fault_in_an_rgb_onnx_model(tmp_path, fault, args, fault_type, layer):
    """ONNX vs ONNX, no sidecars, no data: uniform inputs from the declared shape."""
    source = synthetic.build_rgb_model(tmp_path / "rgb.onnx")
    target = fi.inject(source, tmp_path / "rgb_faulty.onnx", fault, *args)
    report = _check(source, target, None, rounds=2, samples=50)
    assert report.verdict == "discrepant"
    loc = report.localization
    assert loc["fault"]["type"] == fault_type, loc["fault"]
    assert loc["first_divergent"]["target_layer"] == layer
    if fault is fi.reverse_channels:
        assert loc["fault"]["evidence"]["channel_reversed"] is True


def test_clean_rgb_model_against_itself_is_equivalent(tmp_path):
    source = synthetic.build_rgb_model(tmp_path / "rgb.onnx")
    copy = tmp_path / "copy.onnx"
    shutil.copy(source, copy)
    report = _check(source, copy, None, rounds=2, samples=50, localize=True)
    assert report.verdict == "equivalent" and report.localization["fault"] is None
