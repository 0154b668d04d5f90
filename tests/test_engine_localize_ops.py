"""Localization names the op at fault on hand-built graphs (issue 11 item 3), and the restore puts
the source's op back: a Relu the target lost, a faulty branch beside an agreeing sibling, GELU's Erf
swapped inside the next layer's segment, and a ReLU6 (Clip with bound inputs) changed in kind."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from convrepair.check import CheckConfig, run_check
from convrepair.localize.graph import GraphView
from convrepair.plugins import default_registry
from convrepair.repair.restore import restore

RNG = np.random.default_rng(3)
IMAGES = np.random.default_rng(5).uniform(0, 1, (256, 3, 8, 8)).astype(np.float32)
W1, W2 = RNG.normal(0, 0.5, (6, 3, 3, 3)), RNG.normal(0, 0.3, (6, 6, 3, 3))
WQ, WK = RNG.normal(0, 0.5, (6, 6)), RNG.normal(0, 0.5, (6, 6))
FC = RNG.normal(0, 0.5, (3, 6))
WA, WB = RNG.normal(0, 0.3, (3, 6, 3, 3)), RNG.normal(0, 0.3, (3, 6, 3, 3))  # two 3-channel branches


def _model(path, body: list, inits: dict, like=None, standardise=True):
    """image → body (ends in tensor "feat", 6 features) → a classifier standardised on the source's
    features over uniform images, so the class depends on the input and the check can conclude.
    A target is built `like` its source: the same classifier."""
    tensors = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
    fc_w, fc_b = FC, np.zeros(3)
    if like is not None:
        source = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(like)).graph.initializer}
        fc_w, fc_b, standardise = source["fc.w"], source["fc.b"], False
    elif standardise is not True:
        mean, std = standardise
        fc_w, fc_b = FC / std, -(FC / std) @ mean
    tensors += [numpy_helper.from_array(fc_w.astype(np.float32), "fc.w"), numpy_helper.from_array(fc_b.astype(np.float32), "fc.b")]
    nodes = [*body, helper.make_node("Gemm", ["feat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if standardise is True:  # measure the features, then build again with the classifier standardised
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.ValueInfoProto(name="feat"))
        features = _run(probe, ["feat"])[0]
        return _model(path, body, inits, standardise=(features.mean(0), features.std(0) + 1e-6))
    onnx.save(model, str(path))
    return path


def _run(model, names=("logits",)):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(names), {"image": IMAGES})


def _pool(last: str) -> list:
    return [helper.make_node("GlobalAveragePool", [last], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["feat"], name="flatten")]


def _two_convs(path, drop_relu=False, clip=None, like=None):
    """conv1 → act1 → conv2 → relu2 → pool. act1 is a Relu, or a Clip with its bounds as inputs."""
    act = (helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="act1") if clip == "clip"
           else helper.make_node("LeakyRelu", ["c1"], ["a1"], name="act1", alpha=0.3) if clip == "leaky"
           else helper.make_node("Relu", ["c1"], ["a1"], name="act1"))
    body = [helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1] * 4)]
    body += [] if drop_relu else [act]
    body += [helper.make_node("Conv", ["c1" if drop_relu else "a1", "w2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"), *_pool("r2")]
    inits = {"w1": W1, "w2": W2} | ({"lo": 0.0, "hi": 0.5} if clip == "clip" else {})
    return _model(path, body, inits, like)


def _check(source, target):
    return run_check(default_registry(), source, target, CheckConfig(rounds=2, samples=50))


def _restored_outputs(source, target, localization):
    repaired, patch = restore(onnx.load(str(target)), GraphView(onnx.load(str(source))), localization)
    onnx.checker.check_model(repaired)
    return _run(repaired)[0], _run(onnx.load(str(source)))[0], patch


def test_a_relu_the_target_lost_is_named_and_put_back(tmp_path):
    source = _two_convs(tmp_path / "source.onnx")
    target = _two_convs(tmp_path / "target.onnx", drop_relu=True, like=source)
    loc = _check(source, target).localization
    assert loc["fault"]["type"] == "graph_structure", loc["fault"]
    assert loc["fault"]["node"] == "act1" and loc["first_divergent"]["node"] == "act1", loc["first_divergent"]
    repaired, expected, patch = _restored_outputs(source, target, loc)
    assert patch.kind == "insert_missing_node"
    np.testing.assert_allclose(repaired, expected, rtol=1e-5, atol=1e-5)


def test_a_relu6_clip_with_bound_inputs_is_restored_from_leaky_relu(tmp_path):
    source = _two_convs(tmp_path / "source.onnx", clip="clip")
    target = _two_convs(tmp_path / "target.onnx", clip="leaky", like=source)
    loc = _check(source, target).localization
    assert loc["fault"]["type"] == "hyperparameter" and loc["fault"]["node"] == "act1", loc["fault"]
    repaired, expected, patch = _restored_outputs(source, target, loc)
    assert patch.kind == "restore_activation"
    np.testing.assert_allclose(repaired, expected, rtol=1e-5, atol=1e-5)


def _branches(path, wq, like=None):
    """q and k read the same pooled input side by side; the walk meets q first, then k."""
    body = [helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1] * 4),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), *_pool("r1")[:1],
            helper.make_node("Flatten", ["g"], ["p"], name="flatten"),
            helper.make_node("MatMul", ["p", "wq"], ["q"], name="q"),
            helper.make_node("MatMul", ["p", "wk"], ["k"], name="k"),
            helper.make_node("Mul", ["q", "k"], ["feat"], name="mix")]
    return _model(path, body, {"w1": W1, "wq": wq, "wk": WK}, like)


def test_a_faulty_branch_beside_an_agreeing_sibling_is_not_taken_for_a_fusion(tmp_path):
    """The sibling k agrees; that says nothing about q (it does not read q), so q is the fault."""
    faulty = WQ.copy()
    faulty[:, 0] += 0.5 * np.abs(WQ).max()
    source = _branches(tmp_path / "source.onnx", WQ)
    target = _branches(tmp_path / "target.onnx", faulty, like=source)
    loc = _check(source, target).localization
    assert loc["first_divergent"]["target_layer"] == "q", [(r["target_layer"], r["status"]) for r in loc["layers"]]
    assert loc["fault"]["type"] == "weights" and loc["fault"]["node"] == "q"


def _gelu(path, erf_op="Erf", like=None):
    """conv → GAP → dense → GELU (Div, Erf, Add, Mul, Mul: the exporters' spelling) → dense."""
    body = [helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1] * 4), *_pool("c1")[:1],
            helper.make_node("Flatten", ["g"], ["p"], name="flatten"),
            helper.make_node("MatMul", ["p", "wq"], ["h"], name="dense1"),
            helper.make_node("Div", ["h", "sqrt2"], ["hd"], name="div"),
            helper.make_node(erf_op, ["hd"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["e1"], name="add1"),
            helper.make_node("Mul", ["h", "e1"], ["he"], name="mul"),
            helper.make_node("Mul", ["he", "half"], ["gelu"], name="half_mul"),
            helper.make_node("MatMul", ["gelu", "wk"], ["feat"], name="dense2")]
    return _model(path, body, {"w1": W1, "wq": WQ, "wk": WK, "sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5}, like)


def test_gelu_erf_swapped_for_tanh_inside_a_segment_is_an_activation_kind(tmp_path):
    source = _gelu(tmp_path / "source.onnx")
    target = _gelu(tmp_path / "target.onnx", "Tanh", like=source)
    loc = _check(source, target).localization
    assert loc["fault"]["type"] == "hyperparameter", loc["fault"]
    assert loc["fault"]["node"] == "erf" and loc["fault"]["evidence"]["source"] == "Erf"
    repaired, expected, _ = _restored_outputs(source, target, loc)
    np.testing.assert_allclose(repaired, expected, rtol=1e-5, atol=1e-5)


def test_a_walk_a_batch_at_a_time_gives_the_whole_tensors_metrics():
    """RunningDiff (the walk's one pass, a few samples at a time) equals compare_tensors on the
    whole batch, axis order found on the first batch included."""
    from convrepair.localize.tensors import RunningDiff, compare_tensors

    rng = np.random.default_rng(0)
    source = rng.normal(0, 1, (20, 4, 5, 6)).astype(np.float32)
    target = np.transpose(source * (1 + rng.normal(0, 1e-3, source.shape)), (0, 2, 3, 1)).astype(np.float32)
    whole = compare_tensors(source, target)
    running = RunningDiff()
    for start in range(0, 20, 8):
        running.add(source[start : start + 8], target[start : start + 8])
    part = running.result()
    assert part.permutation == whole.permutation == (0, 2, 3, 1)
    for key in ("max_abs", "max_rel", "cosine", "rel_l2"):
        assert np.isclose(getattr(part, key), getattr(whole, key), rtol=1e-9), key
    assert part.rel_error_percentiles == whole.rel_error_percentiles


def _inception(path, drop_relu=False, like=None):
    """Two branches joined by a Concat, the branch with the Relu first in graph order: when the target
    loses that Relu, the checkpoints between it and the Concat (the other branch) still agree."""
    body = [helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1] * 4),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "wb"], ["cb"], name="conv_b", pads=[1] * 4)]
    body += [] if drop_relu else [helper.make_node("Relu", ["cb"], ["rb"], name="relu_b")]
    body += [helper.make_node("Conv", ["r1", "wa"], ["ca"], name="conv_a", pads=[1] * 4),
             helper.make_node("Relu", ["ca"], ["ra"], name="relu_a"),
             helper.make_node("Concat", ["ra", "cb" if drop_relu else "rb"], ["joined"], name="concat", axis=1),
             *_pool("joined")]
    return _model(path, body, {"w1": W1, "wb": WB, "wa": WA}, like)



def test_a_relu_lost_in_a_branch_before_a_concat_is_named_and_put_back(tmp_path):
    """The explanation looks at everything the divergent layer depends on back to agreeing
    checkpoints, not only at the nodes since the previous one in graph order (InceptionV3)."""
    source = _inception(tmp_path / "source.onnx")
    target = _inception(tmp_path / "target.onnx", drop_relu=True, like=source)
    loc = _check(source, target).localization
    assert loc["fault"]["type"] == "graph_structure" and loc["fault"]["node"] == "relu_b", loc["fault"]
    repaired, expected, _ = _restored_outputs(source, target, loc)
    np.testing.assert_allclose(repaired, expected, rtol=1e-5, atol=1e-5)


def _nhwc(path, like=None, reverse=False):
    """An NHWC model whose first layer reads the image itself: a per-pixel dense layer (MatMul over
    the channel axis, the last one), Relu, mean over H and W, then the classifier."""
    from convrepair.sidecar import Sidecar, write_sidecar

    body = [helper.make_node("MatMul", ["rgb", "w_px"], ["px"], name="pixel_dense"),
            helper.make_node("Relu", ["px"], ["rp"], name="relu_px"),
            helper.make_node("ReduceMean", ["rp"], ["feat"], name="mean_hw", axes=[1, 2], keepdims=0)]
    if reverse:  # the injected fault, on the channel axis of NHWC
        body.insert(0, helper.make_node("Gather", ["image", "bgr"], ["rgb"], name="injected_gather", axis=3))
    else:
        body.insert(0, helper.make_node("Identity", ["image"], ["rgb"], name="as_is"))
    inits = {"w_px": np.random.default_rng(11).normal(0, 0.5, (3, 6)), "bgr": np.array([2, 1, 0], np.int64)}
    tensors = [numpy_helper.from_array(np.asarray(v, np.int64 if k == "bgr" else np.float32), k) for k, v in inits.items()]
    if like is not None:
        source = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(like)).graph.initializer}
        fc_w, fc_b = source["fc.w"], source["fc.b"]
    else:
        x = np.transpose(IMAGES, (0, 2, 3, 1))
        feat = np.maximum(x @ inits["w_px"], 0).mean(axis=(1, 2))
        mean, std = feat.mean(0), feat.std(0) + 1e-6
        fc_w, fc_b = FC / std, -(FC / std) @ mean
    tensors += [numpy_helper.from_array(fc_w.astype(np.float32), "fc.w"), numpy_helper.from_array(fc_b.astype(np.float32), "fc.b")]
    graph = helper.make_graph([*body, helper.make_node("Gemm", ["feat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    write_sidecar(path, Sidecar(input_layout=["NHWC"]))
    return path


def test_channels_reversed_on_an_nhwc_input_are_found_and_restored_on_the_channel_axis(tmp_path):
    """RGB ↔ BGR of an NHWC input is a flip of axis 3, not of axis 1 (H): found there, and undone there."""
    np.savez(tmp_path / "nhwc.npz", x=np.transpose(IMAGES, (0, 2, 3, 1)))
    source = _nhwc(tmp_path / "source.onnx")
    target = _nhwc(tmp_path / "target.onnx", like=source, reverse=True)
    report = run_check(default_registry(), source, target, CheckConfig(data=tmp_path / "nhwc.npz", rounds=2, samples=50))
    loc = report.localization
    assert report.verdict == "discrepant"
    assert loc["fault"]["type"] == "preprocessing" and loc["fault"]["evidence"]["channel_axis"] == 3, loc["fault"]
    assert loc["fault"]["node"] == "injected_gather"
    repaired, patch = restore(onnx.load(str(target)), GraphView(onnx.load(str(source))), loc)
    feeds = {"image": np.transpose(IMAGES, (0, 2, 3, 1))}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]  # noqa: E731
    np.testing.assert_allclose(run(repaired), run(onnx.load(str(source))), rtol=1e-5, atol=1e-5)
