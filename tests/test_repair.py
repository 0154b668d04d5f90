"""`convrepair repair`: restores bring injected faults back to equivalent on held-out samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

import faults as fi
import synthetic
from convrepair.convert import convert
from convrepair.fsutil import sha256_file
from convrepair.plugins import default_registry
from convrepair.repair import RepairConfig, run_repair
from convrepair.sidecar import read_sidecar, write_sidecar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    registry = default_registry()
    return {
        "keras_onnx": convert(registry, fixtures_dir / "keras_cnn.keras", "onnx", out_dir=out / "k").output.path,
        "torch_onnx": convert(registry, fixtures_dir / "torch_cnn.pt2", "onnx", out_dir=out / "t").output.path,
        "torch_onnx_bn": convert(registry, fixtures_dir / "torch_cnn.pt2", "onnx", out=out / "bn" / "t.onnx",
                                 options={"fold_constants": "false"}).output.path,
        "torch_int8": convert(registry, fixtures_dir / "torch_cnn.pt2", "onnx-int8", out_dir=out / "q").output.path,
    }


def _faulty(clean, tmp_path, fault, *args):
    out = fi.inject(clean, tmp_path / "faulty.onnx", fault, *args)
    sidecar = read_sidecar(clean)
    if sidecar is not None:
        write_sidecar(out, sidecar)
    return out


def _repair(source, target, out, data, **kwargs):
    return run_repair(default_registry(), source, target, out, RepairConfig(data=data, **kwargs))


KERAS = [
    (fi.perturb_weights, ("conv2",), "restore_weights"),
    (fi.zero_bias, ("conv1",), "restore_biases"),
    (fi.drop_bias, ("conv2",), "restore_biases"),
    (fi.asymmetric_pads, ("conv2",), "restore_attribute"),
    (fi.swap_activation, ("conv2_1/Relu",), "restore_activation"),
    (fi.softmax_axis, (), "restore_attribute"),
    (fi.flatten_without_transpose, (), "restore_attribute"),
    (fi.scale_input, (), "insert_input_fix"),
    (fi.transpose_input, (), "insert_input_fix"),
    (fi.drop_activation, ("fc1_1/Relu",), "insert_missing_node"),
]


@pytest.mark.parametrize("fault, args, patch_kind", KERAS, ids=[f[0].__name__ for f in KERAS])
def test_restore_repairs_keras_conversion_faults(fixtures_dir, converted, tmp_path, fault, args, patch_kind):
    target = _faulty(converted["keras_onnx"], tmp_path, fault, *args)
    digest = sha256_file(target)
    report = _repair(fixtures_dir / "keras_cnn.keras", target, tmp_path / "fixed.onnx", fixtures_dir / "digits_all_nhwc.npz")
    assert report.verdict == "repaired", [a.to_json() for a in report.attempts]
    assert report.check_before["verdict"] == "discrepant"
    assert report.check_after["verdict"] == "equivalent" and report.check_after["samples"] > 0
    assert report.attempts[0].patch.kind == patch_kind and report.attempts[0].accepted
    assert sha256_file(target) == digest, "the target itself is never modified"
    repaired = read_sidecar(tmp_path / "fixed.onnx")
    assert repaired.steps[-1].converter == "convrepair-repair"
    assert repaired.output["sha256"] == sha256_file(tmp_path / "fixed.onnx")


TORCH = [
    (fi.zero_bias, ("/Conv_1",), "torch_onnx", "restore_biases"),
    (fi.batchnorm_epsilon, (0.5,), "torch_onnx_bn", "restore_attribute"),
]


@pytest.mark.parametrize("fault, args, clean, patch_kind", TORCH, ids=[f[0].__name__ for f in TORCH])
def test_restore_repairs_torch_conversion_faults(fixtures_dir, converted, tmp_path, fault, args, clean, patch_kind):
    target = _faulty(converted[clean], tmp_path, fault, *args)
    report = _repair(fixtures_dir / "torch_cnn.pt2", target, tmp_path / "fixed.onnx", fixtures_dir / "digits_all_nchw.npz")
    assert report.verdict == "repaired", [a.to_json() for a in report.attempts]
    assert report.attempts[0].patch.kind == patch_kind


SYNTHETIC = [(fi.reverse_channels, ()), (fi.drop_pad, ()), (fi.resize_mode, ("asymmetric",))]


@pytest.mark.parametrize("fault, args", SYNTHETIC, ids=[f[0].__name__ for f in SYNTHETIC])
def test_restore_repairs_rgb_model_faults(tmp_path, fault, args):
    source = synthetic.build_rgb_model(tmp_path / "rgb.onnx")
    target = fi.inject(source, tmp_path / "faulty.onnx", fault, *args)
    report = _repair(source, target, tmp_path / "fixed.onnx", None, samples=150)  # 750 inputs: 300 held out
    assert report.verdict == "repaired", [a.to_json() for a in report.attempts]


def test_two_faults_are_repaired_one_after_the_other(fixtures_dir, converted, tmp_path):
    once = fi.inject(converted["keras_onnx"], tmp_path / "once.onnx", fi.zero_bias, "conv1")
    target = _faulty(once, tmp_path, fi.asymmetric_pads, "conv2")
    report = _repair(fixtures_dir / "keras_cnn.keras", target, tmp_path / "fixed.onnx", fixtures_dir / "digits_all_nhwc.npz")
    assert report.verdict == "repaired"
    assert [a.patch.kind for a in report.attempts if a.accepted] == ["restore_biases", "restore_attribute"]


def test_precision_fallback_keeps_sensitive_layers_in_fp32(fixtures_dir, converted, tmp_path):
    """The property is constructed, not left to training: the tolerance is half the error int8
    rounding actually causes on these data (so the target is discrepant), and the fallback may keep
    every quantized layer in fp32 (so equivalence is reachable), one more at a time as needed."""
    import onnx

    from convrepair.check import CheckConfig, run_check

    source, data = fixtures_dir / "torch_cnn.pt2", fixtures_dir / "digits_test_nchw.npz"
    measured = run_check(default_registry(), source, converted["torch_int8"], CheckConfig(data=data, atol=1e9, localize=False))
    rounding = measured.pooled.max_abs
    assert rounding > 1e-3  # int8 rounding is visible on the outputs
    atol = rounding / 2
    layers = sum(n.op_type in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")
                 for n in onnx.load(str(converted["torch_int8"])).graph.node)
    assert layers >= 2
    report = _repair(source, converted["torch_int8"], tmp_path / "fixed.onnx", fixtures_dir / "digits_all_nchw.npz",
                     atol=atol, rtol=0.0, max_fp32_layers=layers)
    assert report.verdict == "repaired", [a.to_json() for a in report.attempts]
    fallback = [a for a in report.attempts if a.kind == "precision_fallback"]
    kept = fallback[-1].cost["layers_kept_fp32"]
    assert fallback[-1].accepted and fallback[-1].cost["inference_ms"] > 0 and fallback[-1].cost["inference_ms_before"] > 0
    assert 1 <= len(kept) <= layers
    if not report.check_before["flips"]:  # the tolerance decides here: a PSO patch is not what repaired it
        assert not any(a.applied for a in report.attempts if a.kind == "pso_patch")
    assert report.check_after["outputs"][0]["max_abs"] <= atol


def test_already_equivalent_target_is_written_only_with_force(fixtures_dir, converted, tmp_path):
    report = _repair(fixtures_dir / "keras_cnn.keras", converted["keras_onnx"], tmp_path / "same.onnx", fixtures_dir / "digits_test_nhwc.npz")
    assert report.verdict == "already_equivalent" and report.attempts == [] and report.output is None
    assert not (tmp_path / "same.onnx").exists()
    forced = _repair(fixtures_dir / "keras_cnn.keras", converted["keras_onnx"], tmp_path / "same.onnx",
                     fixtures_dir / "digits_test_nhwc.npz", force=True)
    assert forced.verdict == "already_equivalent"
    assert sha256_file(tmp_path / "same.onnx") == sha256_file(converted["keras_onnx"])


def test_repair_cli_contract(cli, fixtures_dir, converted, tmp_path):
    target = _faulty(converted["keras_onnx"], tmp_path, fi.asymmetric_pads, "conv2")
    ok = cli("repair", fixtures_dir / "keras_cnn.keras", target, "--out", tmp_path / "fixed.onnx",
             "--data", fixtures_dir / "digits_all_nhwc.npz", "--json", tmp_path / "r.json")
    assert ok.code == 0, ok.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "convrepair.repair/v1"
    for key in ("check_before", "attempts", "check_after", "seconds", "device", "output"):
        assert key in report
    patch = report["attempts"][0]["patch"]
    assert {"kind", "location", "parameters", "before", "after"} <= set(patch)
    # what cannot be repaired leaves nothing behind and exits 1
    broken = fi.inject(converted["keras_onnx"], tmp_path / "nosidecar.onnx", fi.transpose_input)
    failed = cli("repair", fixtures_dir / "keras_cnn.keras", broken, "--out", tmp_path / "never.onnx",
                 "--data", fixtures_dir / "digits_test_nhwc.npz", "--strategy", "pso")
    assert failed.code == 1, failed.stderr
    assert not (tmp_path / "never.onnx").exists()


@pytest.fixture(scope="module")
def int8_flipping(fixtures_dir, tmp_path_factory):
    """Static int8 calibrated on images half as bright as real ones: a calibration-mismatch fault."""
    import numpy as np

    from convrepair.convert import load_calibration

    out = tmp_path_factory.mktemp("int8")
    calib = load_calibration(fixtures_dir / "digits_repair_nchw.npz")
    dim = {key: (value[:32] * 0.5).astype("float32") for key, value in calib.items()}
    return convert(default_registry(), fixtures_dir / "torch_cnn.pt2", "onnx-int8", out=out / "dim_int8.onnx", calibration=dim).output.path


def test_pso_patches_int8_label_flips_and_keeps_the_model_int8(fixtures_dir, int8_flipping, tmp_path):
    """The held-out rounds are 500 distinct samples (no overlap): the patch may break 2% of them."""
    data = fixtures_dir / "digits_all_nchw.npz"
    report = _repair(fixtures_dir / "torch_cnn.pt2", int8_flipping, tmp_path / "patched.onnx", data, accept_improvement=True,
                     prefer="fast", max_break_rate=0.02)
    assert report.choice["chosen"] == "pso_patch"
    pso = [a for a in report.attempts if a.kind == "pso_patch"]
    assert pso and pso[0].accepted, [a.to_json() for a in report.attempts]
    assert report.verdict in ("improved", "repaired")
    before, after = report.check_before_held_out, report.check_after
    assert after["label_agreement"] > before["label_agreement"]
    assert len(after["flips"]) < len(before["flips"])
    cost = pso[0].cost
    assert cost["repair_rate_search"] > 0.3 and cost["break_rate_search"] <= 0.02
    assert pso[0].patch.parameters <= 20 and "int8" in pso[0].patch.detail
    import onnx

    patched = onnx.load(str(tmp_path / "patched.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in patched.graph.node)  # still quantized

    again = _repair(fixtures_dir / "torch_cnn.pt2", int8_flipping, tmp_path / "again.onnx", data, accept_improvement=True,
                    prefer="fast", max_break_rate=0.02)
    assert [a.patch.after for a in again.attempts if a.patch] == [a.patch.after for a in report.attempts if a.patch]


def test_static_int8_fallback_and_pso_patch_are_offered_side_by_side(fixtures_dir, int8_flipping, tmp_path):
    data = fixtures_dir / "digits_all_nchw.npz"
    report = _repair(fixtures_dir / "torch_cnn.pt2", int8_flipping, tmp_path / "chosen.onnx", data, accept_improvement=True)
    # the static quantization re-ran with its kept calibration data (no "needs the calibration data")
    fallback = [a for a in report.attempts if a.kind == "precision_fallback"]
    assert fallback and any(a.accepted for a in fallback), [a.to_json() for a in fallback]
    assert all(a.cost["inference_ms"] > 0 for a in fallback)
    choice = report.choice
    rows = {row["kind"]: row for row in choice["options"]}
    assert set(rows) == {"precision_fallback", "pso_patch"} and choice["policy"] == "auto"
    best = min(rows.values(), key=lambda r: (r["held_out_verdict"] != "equivalent", r["held_out_flips"]))
    assert choice["chosen"] == best["kind"] and best["chosen"]
    # chosen on the selection split; the verdict reads the held-out split, which the choice never saw
    assert choice["split"] == "selection" and report.splits["selection"] > 0
    assert report.held_out["n"] == report.splits["held_out"] == report.check_after["distinct_samples"]
    # only what is in the written model is recorded as applied, in the report and the output's sidecar
    applied = [a for a in report.attempts if a.applied]
    assert [a.kind for a in applied] == [best["kind"]]
    assert any(a.accepted and not a.applied for a in report.attempts)
    recorded = read_sidecar(tmp_path / "chosen.onnx").steps[-1].details["patches"]
    assert [p["kind"] for p in recorded] == [applied[0].patch.kind] and recorded[0]["after"] == applied[0].patch.after
    # the calibration data travels with the output, so a later fallback can re-run the quantization
    assert (tmp_path / (int8_flipping.name + ".calibration.npz")).is_file()
    exact = _repair(fixtures_dir / "torch_cnn.pt2", int8_flipping, tmp_path / "exact.onnx", data, accept_improvement=True,
                    prefer="exact")
    assert exact.choice["chosen"] == "precision_fallback"


def test_the_patch_search_sees_the_int8_model_as_it_runs(fixtures_dir, converted, int8_flipping):
    """Issue 18: the swarm's cache was captured with ONNX Runtime's optimizations off, so a static
    QDQ model ran op by op in float, while the runner fuses it into integer kernels (QGemm,
    QLinearConv) whose logits differ (on a CPU without VNNI by up to 2.3, 13 labels of 719); and
    the logits' own QDQ pair, which clamps a saturated logit, was left out. The search then
    promised fixes the running model does not have (repair rate 0.69 over the cache, the flips
    not reduced). Now the cache is the running model's: what the search predicts is what the
    patched model does, label for label."""
    import onnx
    import onnxruntime as ort

    from convrepair.data import Dataset
    from convrepair.repair.outcome import three_splits
    from convrepair.repair.pso import SearchConfig
    from convrepair.repair.search import search_patch

    digits = np.load(fixtures_dir / "digits_all_nchw.npz")
    x = digits["x"].astype(np.float32)[three_splits(len(digits["x"]), 0)["search"]]
    source = converted["torch_onnx"]

    def labels(model):
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0].argmax(axis=1)

    wanted, current = labels(source), labels(int8_flipping)
    negatives, positives = np.nonzero(current != wanted)[0], np.nonzero(current == wanted)[0]
    assert len(negatives) >= 10  # the calibration fault flips labels: there is something to fix
    patched, patch, stats = search_patch(onnx.load(str(int8_flipping)), None, Dataset([x], None, ["NCHW"], "digits"), ["NCHW"],
                                         wanted, current, SearchConfig(particles=40, iterations=30, budget_seconds=20, seed=0,
                                                                       device="cpu"), "pso")
    assert stats["cache_label_mismatch"] == 0  # the cache gives the running model's labels
    after = labels(patched.SerializeToString())
    assert stats["repair_rate_search"] == pytest.approx(float((after[negatives] == wanted[negatives]).mean()), abs=1e-9)
    assert stats["break_rate_search"] == pytest.approx(float((after[positives] != wanted[positives]).mean()), abs=1e-9)
    assert (after != wanted).sum() < len(negatives)  # and it does reduce the flips


def test_static_int8_fallback_refuses_changed_calibration_data(fixtures_dir, int8_flipping, tmp_path):
    import shutil

    from convrepair.convert import CALIBRATION_SUFFIX

    target = tmp_path / int8_flipping.name  # the sidecar names its calibration file by the model's name
    shutil.copy(int8_flipping, target)
    write_sidecar(target, read_sidecar(int8_flipping))
    kept = tmp_path / (int8_flipping.name + CALIBRATION_SUFFIX)
    shutil.copy(int8_flipping.with_name(kept.name), kept)
    data = bytearray(kept.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one changed byte
    kept.write_bytes(bytes(data))
    report = _repair(fixtures_dir / "torch_cnn.pt2", target, tmp_path / "out.onnx", fixtures_dir / "digits_all_nchw.npz",
                     accept_improvement=True, strategy="restore")
    refused = [a for a in report.attempts if a.kind == "precision_fallback"]
    assert refused and not refused[0].accepted and "does not match the sha256" in refused[0].reason


def test_improvement_short_of_equivalence_is_refused_by_default(fixtures_dir, int8_flipping, tmp_path):
    report = _repair(fixtures_dir / "torch_cnn.pt2", int8_flipping, tmp_path / "patched.onnx", fixtures_dir / "digits_all_nchw.npz")
    assert report.verdict == "not_repaired" and not (tmp_path / "patched.onnx").exists()


def test_lost_bias_of_a_keras_target_is_restored_into_its_keras_weights(fixtures_dir, tmp_path):
    """A Keras target whose conv2 bias was zeroed: tf2onnx drops the zero bias, so its IR's Conv has
    no bias input at all. Localization names the lost bias; the restore is carried into the .keras."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from convrepair.check import CheckConfig, run_check
    from convrepair_plugins.tensorflow.runners import load_keras_model

    model = load_keras_model(fixtures_dir / "keras_cnn.keras")
    bias = next(v for v in model.weights if v.path == "conv2/bias")
    bias.assign(bias.numpy() * 0)
    target = tmp_path / "faulty.keras"
    model.save(str(target))
    write_sidecar(target, read_sidecar(fixtures_dir / "keras_cnn.keras"))
    report = _repair(fixtures_dir / "keras_cnn.keras", target, tmp_path / "fixed.keras", fixtures_dir / "digits_all_nhwc.npz")
    fault = report.check_before["localization"]["fault"]
    assert fault["type"] == "biases" and "lost" in fault["detail"]
    assert report.verdict == "repaired", [a.to_json() for a in report.attempts]
    assert [a.kind for a in report.attempts if a.accepted] == ["restore_biases", "carry_back"]
    assert report.output["format"] == "keras" and "conv2/bias" in report.attempts[-1].patch.location
    after = run_check(default_registry(), fixtures_dir / "keras_cnn.keras", tmp_path / "fixed.keras",
                      CheckConfig(data=fixtures_dir / "digits_test_nhwc.npz"))
    assert after.verdict == "equivalent" and after.pooled.max_abs == 0.0


def test_regression_repair_of_a_pytorch_program_writes_the_patch_into_it(cli, fixtures_dir, tmp_path):
    result = cli("repair", fixtures_dir / "torch_cnn_v2.pt2", "--previous", fixtures_dir / "torch_cnn.pt2",
                 "--data", fixtures_dir / "digits_all_nchw.npz", "--out", tmp_path / "v2_fixed.pt2", "--json", tmp_path / "r.json")
    assert result.code == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["output"]["format"] == "pt2" and report["verdict"] == "repaired"
    patch = report["attempts"][-1]["patch"]
    assert "written into the pt2 model's fc2.weight" in patch["detail"]
    assert report["held_out"]["accuracy_after"] > report["held_out"]["accuracy_before"]


@pytest.fixture(scope="module")
def versions(fixtures_dir, tmp_path_factory):
    """Registry versions 1 and 2 of the PyTorch model, as ONNX (patches are written to ONNX)."""
    out = tmp_path_factory.mktemp("versions")
    registry = default_registry()
    return (convert(registry, fixtures_dir / "torch_cnn.pt2", "onnx", out=out / "v1.onnx").output.path,
            convert(registry, fixtures_dir / "torch_cnn_v2.pt2", "onnx", out=out / "v2.onnx").output.path)


def test_regression_repair_against_the_previous_version(cli, fixtures_dir, versions, tmp_path):
    v1, v2 = versions
    result = cli("repair", v2, "--previous", v1, "--data", fixtures_dir / "digits_all_nchw.npz",
                 "--out", tmp_path / "v2_fixed.onnx", "--json", tmp_path / "r.json")
    assert result.code == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "regression" and report["verdict"] == "repaired"
    held = report["held_out"]
    assert held["negatives"] > 20 and held["repair_rate"] >= 0.5 and held["break_rate"] <= 0.01
    assert held["accuracy_after"] > held["accuracy_before"]
    assert report["attempts"][0]["cost"]["history"] == "weight difference to the source"
    assert (tmp_path / "v2_fixed.onnx").exists()


def test_plain_repair_refuses_a_patch_that_breaks_too_much(cli, fixtures_dir, versions, tmp_path):
    """Version 1 is wrong on a handful of test digits: a patch for them does not generalise."""
    v1, _ = versions
    result = cli("repair", v1, "--data", fixtures_dir / "digits_test_nchw.npz", "--out", tmp_path / "never.onnx",
                 "--json", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "plain"
    if report["verdict"] == "repaired":  # acceptable only within the stated break rate
        assert report["held_out"]["break_rate"] <= 0.01 and result.code == 0
    else:
        assert result.code == 1 and not (tmp_path / "never.onnx").exists()


def test_plain_repair_of_the_regressed_version(fixtures_dir, versions, tmp_path):
    from convrepair.repair.model_repair import run_model_repair

    _, v2 = versions
    report = run_model_repair(default_registry(), v2, None, tmp_path / "fixed.onnx",
                              RepairConfig(data=fixtures_dir / "digits_all_nchw.npz"))
    assert report["verdict"] == "repaired", report["attempts"]
    assert report["attempts"][0]["cost"]["history"].startswith("none")


def test_restore_of_a_pytorch_target_is_written_back_into_its_program(fixtures_dir, tmp_path):
    """Keras source, PyTorch (.pt2, from onnx2torch) target with one bias zeroed inside the module."""
    import shutil as _shutil

    import torch

    from convrepair.check import CheckConfig, run_check
    from convrepair.sidecar import sidecar_path

    converted = convert(default_registry(), fixtures_dir / "keras_cnn.keras", "torch", out_dir=tmp_path / "c").output.path
    program = torch.export.load(str(converted))
    name = next(k for k in program.state_dict if "conv2" in k and k.endswith(".bias"))
    with torch.no_grad():
        program.state_dict[name].zero_()
    target = tmp_path / "faulty.pt2"
    torch.export.save(program, str(target))
    _shutil.copy(sidecar_path(converted), sidecar_path(target))
    report = _repair(fixtures_dir / "keras_cnn.keras", target, tmp_path / "fixed.pt2", fixtures_dir / "digits_all_nhwc.npz")
    assert report.verdict == "repaired", [a.to_json() for a in report.attempts]
    assert report.output["format"] == "pt2"
    assert [a.kind for a in report.attempts if a.accepted] == ["restore_biases", "carry_back"]
    after = run_check(default_registry(), fixtures_dir / "keras_cnn.keras", tmp_path / "fixed.pt2",
                      CheckConfig(data=fixtures_dir / "digits_test_nhwc.npz"))
    assert after.verdict == "equivalent"
