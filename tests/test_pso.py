"""PSO patch search: the batched evaluator is exact, the search is seeded, the patch stays int8."""

from __future__ import annotations

import numpy as np
import pytest

from convrepair.repair.pso import OPTIMISERS, SearchConfig, SwarmEvaluator
from convrepair.repair.select import RepairData, boundary_order, localize_weights, pareto_front


def _problem(seed=0, n=300, features=16, classes=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w_true = rng.normal(size=(classes, features)).astype(np.float32)
    wanted = (x @ w_true.T).argmax(axis=1)
    w = w_true.copy()
    w[0, :3] += 1.5  # a regressed copy: some labels flip
    base = x @ w.T
    current = base.argmax(axis=1)
    return x, w, w_true, base, wanted, np.nonzero(current != wanted)[0], np.nonzero(current == wanted)[0]


def test_batched_logits_equal_the_patched_layer_computed_directly():
    x, w, _, base, wanted, neg, pos = _problem()
    positions = [(0, 0), (0, 1), (2, 5), (3, 7)]
    original = np.array([w[r, c] for r, c in positions], np.float32)
    evaluator = SwarmEvaluator(x, base, wanted, neg, pos, positions, original, device="cpu")
    candidates = np.random.default_rng(1).normal(size=(5, len(positions))).astype(np.float32)
    import torch

    batched = evaluator.logits(torch.as_tensor(candidates)).numpy()
    for p, values in enumerate(candidates):
        patched = w.copy()
        for (r, c), v in zip(positions, values):
            patched[r, c] = v
        np.testing.assert_allclose(batched[p], x @ patched.T, rtol=1e-4, atol=1e-4)


def test_fitness_follows_the_arachne_formula():
    x, w, _, base, wanted, neg, pos = _problem()
    positions = [(0, 0)]
    evaluator = SwarmEvaluator(x, base, wanted, neg, pos, positions, np.array([w[0, 0]], np.float32), alpha=1.0, device="cpu")
    fitness = evaluator.fitness(np.array([[w[0, 0]]], np.float32))[0]
    z = base - base.max(axis=1, keepdims=True)
    nll = -(z[np.arange(len(z)), wanted] - np.log(np.exp(z).sum(axis=1)))
    correct = base.argmax(axis=1) == wanted
    expected = (correct[neg].mean() + 1) / (nll[neg].mean() + 1) + (correct[pos].mean() + 1) / (nll[pos].mean() + 1)
    assert fitness == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("positions", [[(0, 0), (0, 1), (2, 5)], [(0, 0), (1, 1), (2, 2), (3, 3)]],
                         ids=["some classes fixed", "every class changed"])
def test_fitness_over_the_changed_classes_equals_the_dense_formula(positions):
    import torch

    x, w, _, base, wanted, neg, pos = _problem()
    original = np.array([w[r, c] for r, c in positions], np.float32)
    evaluator = SwarmEvaluator(x, base, wanted, neg, pos, positions, original, alpha=0.7, device="cpu")
    candidates = np.random.default_rng(2).normal(size=(9, len(positions))).astype(np.float32) * 3
    z = evaluator.logits(torch.as_tensor(candidates)).numpy().astype(np.float64)  # (P, N, C), every class
    log_p = z - z.max(axis=2, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=2, keepdims=True))
    nll = -np.take_along_axis(log_p, wanted[None, :, None], axis=2)[..., 0]
    correct = z.argmax(axis=2) == wanted[None]
    expected = ((correct[:, neg].mean(1) + 1) / (nll[:, neg].mean(1) + 1)
                + 0.7 * (correct[:, pos].mean(1) + 1) / (nll[:, pos].mean(1) + 1))
    np.testing.assert_allclose(evaluator.fitness(candidates), expected, rtol=1e-4)


def test_fitness_breaks_ties_like_argmax_over_every_class():
    # the start particle reproduces the base logits exactly, ties included: class 0 (changed) and
    # class 1 (fixed) tie, and argmax takes the lower index
    x = np.ones((4, 2), np.float32)
    w = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]], np.float32)
    base = x @ w.T  # every row [1, 1, 0]
    wanted = np.array([0, 0, 1, 2])
    evaluator = SwarmEvaluator(x, base, wanted, np.array([2, 3]), np.array([0, 1]), [(0, 0)], np.array([0.5], np.float32),
                               device="cpu")
    fitness = evaluator.fitness(np.array([[0.5]], np.float32))[0]
    nll = -(base - np.log(np.exp(base).sum(axis=1, keepdims=True)))[np.arange(4), wanted]
    expected = (0 + 1) / (nll[[2, 3]].mean() + 1) + (1 + 1) / (nll[[0, 1]].mean() + 1)  # rows 0, 1 right; 2, 3 wrong
    assert fitness == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("optimiser", ["pso", "de"])
def test_search_fixes_negatives_and_is_deterministic(optimiser):
    x, w, w_true, base, wanted, neg, pos = _problem()
    assert len(neg) > 5
    data = RepairData(x, base, wanted, neg, pos)
    positions = localize_weights(data, w, history=w_true, top_n=16, limit=6)
    assert (0, 0) in positions or (0, 1) in positions or (0, 2) in positions  # the regressed weights are found
    original = np.array([w[r, c] for r, c in positions], np.float32)
    evaluator = SwarmEvaluator(x, base, wanted, neg, pos, positions, original, device="cpu")
    stats = (float(w.mean()), float(w.std()), float(w.min()), float(w.max()))
    config = SearchConfig(particles=40, iterations=60, seed=3, budget_seconds=30)
    first = OPTIMISERS[optimiser](evaluator.fitness, original, stats, config)
    second = OPTIMISERS[optimiser](evaluator.fitness, original, stats, config)
    np.testing.assert_array_equal(first.values, second.values)
    assert first.fitness >= evaluator.fitness(original[None])[0]
    import torch

    labels = evaluator.logits(torch.as_tensor(first.values[None]))[0].argmax(dim=-1).numpy()
    repair_rate = (labels[neg] == wanted[neg]).mean()
    break_rate = (labels[pos] != wanted[pos]).mean()
    assert repair_rate >= 0.5 and break_rate <= 0.05, (repair_rate, break_rate)


def test_fake_quantization_limits_the_search_to_int8_values():
    x, w, _, base, wanted, neg, pos = _problem()
    positions = [(0, 0)]
    scale = np.array([0.1], np.float32)
    evaluator = SwarmEvaluator(x, base, wanted, neg, pos, positions, np.array([w[0, 0]], np.float32),
                               device="cpu", quantizer=(scale, np.zeros(1, np.float32), -128, 127))
    import torch

    assert evaluator.fake_quant(torch.tensor([[0.123], [100.0]])).numpy().ravel().tolist() == pytest.approx([0.1, 12.7])


def test_quantized_logits_saturate_and_ties_go_to_the_lower_class():
    """Issue 18: a static int8 model's logits pass a QDQ pair calibrated on other data. A logit
    clamped at the top of its range does not fall when a weight lowers it below the float value
    it had; the evaluator rounds and clamps to the pair's grid (uint8, zero point 0, scale 1: the
    range [0, 255]) and breaks ties as argmax does, towards the lower class."""
    import torch

    x = np.array([[1.0], [1.0]], np.float32)
    base = np.array([[300.0, 255.0], [2.0, 100.0]], np.float32)  # float logits before the pair
    wanted = np.array([1, 1])
    positions = [(0, 0)]  # the weight feeding class 0
    evaluator = SwarmEvaluator(x, base, wanted, np.array([0]), np.array([1]), positions, np.array([0.0], np.float32),
                               device="cpu", output_quantizer=(1.0, 0.0, 0, 255))
    lowered = torch.tensor([[-40.0]])  # class 0: 300 → 260, still clamped to 255: a tie
    logits = evaluator.logits(lowered)[0].numpy()
    assert logits[0].tolist() == [255.0, 255.0] and logits.argmax(axis=1).tolist() == [0, 1]
    # the old evaluator started from the logits after the pair (already clamped) and promised a fix
    clamped = SwarmEvaluator(x, np.clip(base, 0, 255), wanted, np.array([0]), np.array([1]), positions,
                             np.array([0.0], np.float32), device="cpu")
    assert clamped.logits(lowered)[0].numpy().argmax(axis=1).tolist() == [1, 1]
    # the fitness counts the tie as the lower class (still wrong); lowering past 255 fixes it
    fitness = evaluator.fitness(np.array([[-40.0], [-50.0]], np.float32))
    assert fitness[1] > fitness[0]
    assert evaluator.logits(torch.tensor([[-50.0]]))[0].numpy().argmax(axis=1).tolist() == [1, 1]


def test_pareto_front_and_boundary_order():
    assert sorted(pareto_front(np.array([3.0, 1.0, 2.0, 0.5]), np.array([1.0, 3.0, 2.0, 0.5]))) == [0, 1, 2]
    logits = np.array([[2.0, 1.9], [5.0, 0.0], [0.0, 3.0]])
    order = boundary_order(logits, np.array([1, 1, 0]), np.zeros((0, 2)), np.zeros(0, dtype=int))
    assert order[0] == 0  # closest to the decision boundary first
    # equal boundary distance: the one farther from another class's success comes first
    near = np.array([[1.0, 0.0], [3.0, 2.0]])  # both 1 from the boundary
    order = boundary_order(near, np.array([1, 1]), np.array([[1.0, 0.0]]), np.array([0]))
    assert order[0] == 1


@pytest.fixture(scope="module")
def reduced(fixtures_dir, tmp_path_factory):
    """The PyTorch and Keras fixtures in fp16 (Softmax kept in fp32 between Casts) and dynamic
    int8 (the last dense layer is a MatMulInteger rescaled by a Mul)."""
    from convrepair.convert import convert
    from convrepair.plugins import default_registry

    out = tmp_path_factory.mktemp("reduced")
    return {(name, to): convert(default_registry(), fixtures_dir / name, to, out_dir=out / f"{name}-{to}").output.path
            for name in ("torch_cnn.pt2", "keras_cnn.keras") for to in ("onnx-fp16", "onnx-int8")}


@pytest.mark.slow
@pytest.mark.parametrize("name, to", [("torch_cnn.pt2", "onnx-fp16"), ("torch_cnn.pt2", "onnx-int8"),
                                      ("keras_cnn.keras", "onnx-fp16"), ("keras_cnn.keras", "onnx-int8")])
def test_a_patch_is_searched_on_fp16_and_int8_graphs_and_keeps_their_precision(reduced, fixtures_dir, name, to):
    """Issue 18: on fp16 and dynamic int8 targets the patch refused ("the last dense layer does not
    feed the logits linearly"). Now the layer is found, its float input and weights are right
    (the patched graph's logits move as the evaluator predicts), and the patch stays fp16 / int8."""
    import onnx
    import onnxruntime as ort

    from convrepair.data import load_npz
    from convrepair.localize.graph import GraphView
    from convrepair.plugins import default_registry
    from convrepair.repair.patch import last_dense_layer
    from convrepair.repair.search import labels_of, search_patch

    path = reduced[(name, to)]
    model = onnx.load(str(path))
    layer = last_dense_layer(GraphView(model))
    assert layer.node.op == ("MatMulInteger" if to == "onnx-int8" else "MatMul" if "keras" in name else "Gemm")
    assert (layer.quantization is not None) == (to == "onnx-int8")
    registry = default_registry()
    from convrepair.model import model_ref
    from convrepair.sidecar import read_sidecar

    with registry.load(model_ref(path, registry), read_sidecar(path), device="cpu") as runner:
        data = load_npz(fixtures_dir / ("digits_test_nchw.npz" if "torch" in name else "digits_test_nhwc.npz"), runner.inputs)
        data = data.take(np.arange(200))
        current = labels_of(runner, data)
        layouts = [spec.layout for spec in runner.inputs]
    wanted = current.copy()
    wanted[:10] = (current[:10] + 1) % 10  # ten samples to move: a search has negatives
    patched, patch, stats = search_patch(model, None, data, layouts, wanted, current,
                                         SearchConfig(budget_seconds=1, seed=0, device="cpu"), "pso")
    assert patch.parameters > 0 and stats["negatives"] == 10
    weight = next(i for i in patched.graph.initializer if i.name == layer.weight_name)
    before = next(i for i in model.graph.initializer if i.name == layer.weight_name)
    assert weight.data_type == before.data_type and weight.raw_data != before.raw_data  # same precision, new values
    session = ort.InferenceSession(patched.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    x = data.inputs[0].astype(np.float16 if "float16" in feed.type else np.float32)
    labels = session.run(None, {feed.name: x})[0].astype(np.float32).argmax(axis=1)
    negatives, positives = np.arange(10), np.arange(10, 200)
    # what the evaluator predicted over its cache is what the patched graph does
    assert abs(float((labels[negatives] == wanted[negatives]).mean()) - stats["repair_rate_search"]) <= 0.2
    assert abs(float((labels[positives] != wanted[positives]).mean()) - stats["break_rate_search"]) <= 0.05


@pytest.mark.slow
def test_a_patch_is_searched_on_a_static_qoperator_int8_graph(fixtures_dir, tmp_path):
    """Static int8 in ONNX Runtime's QOperator format: QLinearMatMul → QLinearAdd → QLinearSoftmax.
    The layer's input and the logits are dequantized with their own scales; the weight stays int8."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from convrepair.convert import convert
    from convrepair.data import Dataset
    from convrepair.localize.graph import GraphView
    from convrepair.plugins import default_registry
    from convrepair.repair.patch import last_dense_layer
    from convrepair.repair.search import search_patch

    fp32 = convert(default_registry(), fixtures_dir / "keras_cnn.keras", "onnx", out_dir=tmp_path / "k").output.path
    digits = np.load(fixtures_dir / "digits_test_nhwc.npz")
    x = digits["x"][:200].astype(np.float32)
    name = onnx.load(str(fp32)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: x[i:i + 50]} for i in range(0, 200, 50)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(tmp_path / "qop.onnx"), Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(tmp_path / "qop.onnx"))
    layer = last_dense_layer(GraphView(model))
    assert layer.node.op == "QLinearMatMul" and layer.input_dequant is not None and layer.logits_dequant is not None
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    current = session.run(None, {name: x})[0].argmax(axis=1)
    wanted = current.copy()
    wanted[:10] = (current[:10] + 1) % 10
    data = Dataset([x], None, ["NHWC"], "digits")
    patched, patch, stats = search_patch(model, None, data, ["NHWC"], wanted, current,
                                         SearchConfig(budget_seconds=1, seed=0, device="cpu"), "pso")
    weight = next(i for i in patched.graph.initializer if i.name == layer.weight_name)
    assert weight.data_type == onnx.TensorProto.INT8 and patch.parameters > 0
    labels = ort.InferenceSession(patched.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {name: x})[0].argmax(axis=1)
    assert abs(float((labels[:10] == wanted[:10]).mean()) - stats["repair_rate_search"]) <= 0.3
    assert abs(float((labels[10:] != wanted[10:]).mean()) - stats["break_rate_search"]) <= 0.05
