"""Reliability lenses: known answers for each lens, then the lenses through the real CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from convrepair.data import Dataset
from convrepair.errors import BadInput
from convrepair.lenses import LensConfig, LensModel, parse_lenses, run_lenses
from convrepair.lenses.calibration import fit_temperature, reliability
from convrepair.lenses.occlusion import occlusion_maps
from convrepair.lenses.robustness import fgsm, pgd
from convrepair.lenses.scores import log_softmax
from convrepair.lenses.uncertainty import ensemble_split, ks_two_sample
from convrepair.model import model_ref
from convrepair.plugins import default_registry

CLASSES = 3


def _linear_onnx(path: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    """logits = W · flatten(x) + b on (N, 1, 8, 8) images: the closed forms below hold for it."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]),
         helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1)],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", weight.shape[0]])],
        [numpy_helper.from_array(weight.astype(np.float32), "W"), numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def linear(tmp_path):
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(0, 1, (CLASSES, 64)), rng.normal(0, 0.1, CLASSES)
    return _linear_onnx(tmp_path / "linear.onnx", weight, bias), weight, bias


def _closed_form_gradient(weight, bias, x, y):
    """d CE(Wx + b, y) / dx = Wᵀ (softmax(Wx + b) − onehot(y)), per sample."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    p = np.exp(log_softmax(flat @ weight.T + bias))
    p[np.arange(len(y)), y] -= 1.0
    return (p @ weight).reshape(x.shape)


# --- calibration ---------------------------------------------------------------------------------

def test_ece_of_a_hand_made_set_of_predictions():
    # 10 predictions at 0.9 of which 8 are right, 10 at 0.55 of which 6 are right:
    # ECE = 0.5·|0.8 − 0.9| + 0.5·|0.6 − 0.55| = 0.075; the worst bin's gap (MCE) is 0.1.
    confidence = np.array([0.9] * 10 + [0.55] * 10)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 6 + [0] * 4)
    ece, mce, bins = reliability(confidence, correct, bins=10)
    assert ece == pytest.approx(0.075) and mce == pytest.approx(0.1)
    filled = [(b.lower, b.count) for b in bins if b.count]
    assert filled == [(pytest.approx(0.5), 10), (pytest.approx(0.8), 10)]  # (0.5, 0.6] and (0.8, 0.9]: upper edges inclusive


def test_perfectly_calibrated_predictions_have_zero_ece():
    confidence = np.array([0.75] * 4 + [1.0] * 3)
    correct = np.array([1, 1, 1, 0, 1, 1, 1])
    assert reliability(confidence, correct, bins=15)[0] == pytest.approx(0.0)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (20000, 10))
    probabilities = np.exp(log_softmax(logits, true_t))
    labels = (probabilities.cumsum(axis=1) > rng.uniform(size=(len(logits), 1))).argmax(axis=1)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)
    # the same from log-probabilities (a softmax head): log_softmax is shift-invariant
    assert fit_temperature(log_softmax(logits), labels) == pytest.approx(true_t, rel=0.05)


# --- uncertainty ---------------------------------------------------------------------------------

def test_ks_two_sample_matches_scipy_asymptotic():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 400), rng.normal(0.25, 1, 300)
    d, p = ks_two_sample(a, b)
    reference = ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(reference.statistic) and p == pytest.approx(reference.pvalue, rel=0.15, abs=1e-4)
    assert ks_two_sample(a, a) == (0.0, 1.0)


def test_ensemble_split_separates_epistemic_from_aleatoric():
    same = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    ratio, total, aleatoric, epistemic = ensemble_split([same, same])
    assert np.allclose(epistemic, 0) and np.allclose(ratio, 0) and np.allclose(total, aleatoric)
    # two confident models that disagree: all the uncertainty is between them (log 2 nats)
    a, b = np.log(np.array([[1 - 1e-9, 1e-9]])), np.log(np.array([[1e-9, 1 - 1e-9]]))
    ratio, total, aleatoric, epistemic = ensemble_split([a, b])
    assert epistemic[0] == pytest.approx(math.log(2), abs=1e-6) and ratio[0] == pytest.approx(0.5)


# --- robustness ----------------------------------------------------------------------------------

def test_fgsm_on_a_linear_model_equals_the_closed_form(linear):
    path, weight, bias = linear
    registry = default_registry()
    x = np.random.default_rng(3).uniform(0, 1, (32, 1, 8, 8)).astype(np.float32)
    y = np.arange(32) % CLASSES
    with registry.load_differentiable(model_ref(path, registry)) as model:  # ONNX → onnx2torch → autograd
        assert model.via == "onnx2torch"
        grad, _ = model.loss_gradient(x, y)
        expected = _closed_form_gradient(weight, bias, x, y)
        assert np.allclose(grad, expected, atol=1e-4)
        adversarial = fgsm(lambda a, b: model.loss_gradient(a, b)[0], x, y, 0.1, 0.0, 1.0)
    assert np.allclose(adversarial, np.clip(x + 0.1 * np.sign(expected), 0, 1), atol=1e-6)


def test_pgd_stays_inside_the_epsilon_ball_and_the_valid_range(linear):
    _, weight, bias = linear
    x = np.random.default_rng(4).uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    y = np.arange(64) % CLASSES
    epsilon = 0.2
    adversarial = pgd(lambda a, b: _closed_form_gradient(weight, bias, a, b), x, y, epsilon, 0.05, 20, 0.0, 1.0,
                      np.random.default_rng(0))
    assert np.abs(adversarial - x).max() <= epsilon + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    loss = lambda z: -log_softmax(z.reshape(len(z), -1) @ weight.T + bias)[np.arange(len(y)), y].mean()  # noqa: E731
    assert loss(adversarial) > loss(fgsm(lambda a, b: _closed_form_gradient(weight, bias, a, b), x, y, epsilon, 0, 1)) > loss(x)


# --- occlusion -----------------------------------------------------------------------------------

def test_occlusion_lights_up_the_only_region_the_model_looks_at(tmp_path):
    weight = np.zeros((2, 64))
    region = np.zeros((8, 8))
    region[5:7, 2:4] = 1.0  # the model reads rows 5–6, columns 2–3 and nothing else
    weight[0] = 4 * region.ravel()
    path = _linear_onnx(tmp_path / "region.onnx", weight, np.array([0.0, 2.0]))
    registry = default_registry()
    x = np.ones((3, 1, 8, 8), np.float32)
    with registry.load(model_ref(path, registry)) as runner:
        from convrepair.lenses.scores import as_log_probabilities, predict_scores

        def predict(batch):
            return as_log_probabilities(predict_scores(runner, Dataset([batch], None, ["NCHW"], "test")))

        maps, predicted = occlusion_maps(predict, x, (2, 3), patch=2, stride=1, fill=0.0)
    assert maps.shape == (3, 7, 7) and (predicted == 0).all()
    lit = np.argwhere(np.abs(maps[0]) > 1e-6)
    # every 2×2 window overlapping rows 5–6 × columns 2–3, and no other
    assert {tuple(p) for p in lit} == {(i, j) for i in (4, 5, 6) for j in (1, 2, 3)}
    assert maps[0][5, 2] == maps[0].max()  # covering the whole region hurts most


# --- the lens runner -----------------------------------------------------------------------------

def test_parse_lenses():
    assert parse_lenses("all") == ("calibration", "uncertainty", "robustness", "occlusion")
    assert parse_lenses(None) == parse_lenses("none") == ()
    assert parse_lenses("occlusion, calibration") == ("occlusion", "calibration")
    with pytest.raises(BadInput, match="unknown lens colour"):
        parse_lenses("calibration,colour")


def test_a_lens_that_cannot_run_says_why_and_the_others_go_on(linear):
    path, _, _ = linear
    registry = default_registry()
    x = np.random.default_rng(5).uniform(0, 1, (60, 1, 8, 8)).astype(np.float32)
    dataset = Dataset([x], None, ["NCHW"], "unlabelled")  # no labels: calibration cannot run
    with registry.load(model_ref(path, registry)) as a, registry.load(model_ref(path, registry)) as b:
        report = run_lenses([LensModel("source", a), LensModel("target", b)], dataset, np.arange(60), LensConfig(),
                            gradients=None, input_range=(0.0, 1.0)).to_json()
    assert report["calibration"] == {"unavailable": "needs labels: the data has no 'y'"}
    assert "no gradients" in report["robustness"]["unavailable"]
    assert report["uncertainty"]["shift"]["target"]["confidence_d"] == 0.0
    assert report["occlusion"]["samples"] and not any(s["changed"] for s in report["occlusion"]["samples"])
    flat = Dataset([x.reshape(60, 64)], None, ["NC"], "flat")
    assert "occlusion needs image inputs" in _occlusion_reason(flat)


def test_a_model_the_lenses_cannot_load_is_reported_not_raised(tmp_path):
    from convrepair.lenses import run_lenses_on_files

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07" + bytes(200))
    dataset = Dataset([np.zeros((10, 1, 8, 8), np.float32)], None, ["NCHW"], "zeros")
    report = run_lenses_on_files(default_registry(), [("source", corrupt)], dataset, np.arange(10), LensConfig()).to_json()
    for name in ("calibration", "uncertainty", "robustness", "occlusion"):
        assert report[name]["unavailable"].startswith("cannot load the models: ") and "corrupt.onnx" in report[name]["unavailable"]


def _occlusion_reason(dataset):
    from convrepair.lenses.occlusion import spatial_axes
    from convrepair.lenses.scores import LensUnavailable

    try:
        spatial_axes(dataset.layouts[0], dataset.inputs[0].ndim)
    except LensUnavailable as exc:
        return str(exc)
    return ""


# --- end to end ----------------------------------------------------------------------------------

def test_check_with_lenses_through_the_cli(fixtures_dir, tmp_path):
    from convrepair.convert import convert

    int8 = convert(default_registry(), fixtures_dir / "torch_cnn.pt2", "onnx-int8", out_dir=tmp_path).output.path
    result = run_cli("check", fixtures_dir / "torch_cnn.pt2", int8,
                     "--data", fixtures_dir / "digits_test_nchw.npz", "--lenses", "all", "--json", tmp_path / "c.json")
    assert result.code in (0, 1), result.stderr
    lenses = json.loads((tmp_path / "c.json").read_text())["lenses"]
    assert lenses["roles"] == ["source", "target"]
    assert all("unavailable" not in lenses[name] for name in ("calibration", "uncertainty", "robustness", "occlusion")), lenses
    assert lenses["robustness"]["gradients_via"] == "pt2"
    points = lenses["robustness"]["points"]
    assert {p["attack"] for p in points} == {"fgsm", "pgd"} and len(points) == 6
    pgd_strongest = max((p for p in points if p["attack"] == "pgd"), key=lambda p: p["epsilon"])
    assert pgd_strongest["success"]["source"] > 0.1  # white-box PGD at ε = 0.1 of the range does bite
    assert lenses["seconds"]["robustness"] + lenses["seconds"]["occlusion"] < 30
    assert "reliability lenses" in result.stdout and "PGD acc." in result.stdout


def test_lens_options_through_the_cli(linear, tmp_path):
    path, _, _ = linear
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "data.npz", x=rng.uniform(0, 1, (120, 1, 8, 8)).astype(np.float32), y=rng.integers(0, CLASSES, 120))
    result = run_cli("check", path, path, "--data", tmp_path / "data.npz", "--lenses", "robustness,calibration",
                     "--epsilons", "0.05", "--pgd-steps", "3", "--pgd-step", "0.5", "--json", tmp_path / "c.json")
    assert result.code == 0, result.stderr
    lenses = json.loads((tmp_path / "c.json").read_text())["lenses"]
    assert set(lenses) >= {"robustness", "calibration"} and "occlusion" not in lenses
    robustness = lenses["robustness"]
    assert robustness["pgd_steps"] == 3 and robustness["pgd_step"] == "0.5·ε" and robustness["gradients_via"] == "onnx2torch"
    low, high = robustness["input_range"]  # no sidecar: the data's own range
    assert [(p["attack"], p["epsilon"]) for p in robustness["points"]] == [
        ("fgsm", pytest.approx(0.05 * (high - low), abs=1e-6)), ("pgd", pytest.approx(0.05 * (high - low), abs=1e-6))]
    # the same model twice: the very same adversarial inputs fool both alike
    assert all(p["success"]["source"] == p["success"]["target"] for p in robustness["points"])
    bad = run_cli("check", path, path, "--data", tmp_path / "data.npz", "--lenses", "all", "--epsilons", "2")
    assert bad.code == 2 and "--epsilons" in bad.stderr


def test_bad_lens_name_is_a_usage_error(fixtures_dir):
    result = run_cli("check", fixtures_dir / "torch_cnn.pt2", fixtures_dir / "torch_cnn.pt", "--lenses", "vibes")
    assert result.code == 2 and "unknown lens vibes" in result.stderr


@pytest.fixture(scope="module")
def signed_repair(fixtures_dir, tmp_path_factory):
    """A broken Keras→ONNX conversion repaired with every lens on, and its signed log."""
    import faults

    from convrepair.convert import convert
    from convrepair.sidecar import read_sidecar, write_sidecar

    root = tmp_path_factory.mktemp("lens-repair")
    clean = convert(default_registry(), fixtures_dir / "keras_cnn.keras", "onnx", out_dir=root / "converted").output.path
    faults.inject(clean, root / "broken.onnx", faults.asymmetric_pads, "conv2")
    write_sidecar(root / "broken.onnx", read_sidecar(clean))
    assert run_cli("keys", "init", "--name", "service", "--dir", root / "keys", "--trust", root / "trust.json").code == 0
    result = run_cli("repair", fixtures_dir / "keras_cnn.keras", root / "broken.onnx", "--out", root / "repaired.onnx",
                     "--data", fixtures_dir / "digits_all_nhwc.npz", "--lenses", "all", "--sign-key", root / "keys" / "service.key",
                     "--json", root / "repair.json")
    assert result.code == 0, result.stdout + result.stderr
    return root


def test_repair_log_carries_the_lenses_for_source_target_and_repaired(signed_repair):
    from convrepair.ledger.dsse import read_envelope, statement_of
    from convrepair.ledger.log import validate_log

    log = signed_repair / "repaired.onnx.log.dsse.json"
    envelope, _ = read_envelope(log)
    statement = statement_of(envelope, log)
    validate_log(statement)
    lenses = statement["predicate"]["lenses"]
    assert lenses["roles"] == ["source", "target", "repaired"]
    calibration = lenses["calibration"]
    assert calibration["repaired"]["ece"] == pytest.approx(calibration["source"]["ece"], abs=1e-3)
    assert calibration["target"]["accuracy"] < 0.2 < 0.9 < calibration["repaired"]["accuracy"]
    assert lenses["robustness"]["gradients_via"] == "keras"  # crafted in the source's own framework
    assert lenses["robustness"]["flags"] == []  # the restored model is as robust as its source
    changed = [s for s in lenses["occlusion"]["samples"] if s["changed"]]
    assert changed and all(set(s["maps"]) == {"source", "target", "repaired"} for s in changed)
    assert "lenses" not in statement["predicate"]["repair"]  # once, under the predicate


def test_show_renders_the_lenses(signed_repair):
    result = run_cli("show", signed_repair / "repaired.onnx.log.dsse.json", "--html", signed_repair / "log.html")
    assert result.code == 0, result.stderr
    assert "reliability lenses" in result.stdout and "robustness: accuracy under attack" in result.stdout
    page = (signed_repair / "log.html").read_text()
    for heading in ("Reliability lenses", "Calibration", "Uncertainty", "Robustness", "Occlusion"):
        assert f"<h3>{heading}</h3>" in page or f"<h2>{heading}</h2>" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page.split("<details>")[0]
    assert "<script" not in page
    # the restore's evidence (the browser test of a whole page is in test_report_html.py)
    assert "threshold: diverged" in page and "above 0.001" in page and "Label agreement per round, held-out half" in page
