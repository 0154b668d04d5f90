"""A large model is localized in its lean form (issue 21): the graph without its weights, every
weight in one data file read when asked. The lean form must run and read exactly as the model does,
and a localization over lean IRs must say what the ordinary one says. "Large" is a size threshold;
here it is set to 0 so that CI-size models take the lean path."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from convrepair import lean_onnx
from convrepair.check import CheckConfig, run_check
from convrepair.localize.graph import GraphView
from convrepair.plugins import default_registry

RNG = np.random.default_rng(7)
W1, W2, FC = RNG.normal(0, 0.5, (6, 3, 3, 3)), RNG.normal(0, 0.3, (6, 6, 3, 3)), RNG.normal(0, 0.5, (3, 6))
IMAGES = np.random.default_rng(5).uniform(0, 1, (64, 3, 8, 8)).astype(np.float32)


def _cnn(path, drop_relu: bool = False, data: bool = False):
    """image → conv1 → relu1 → conv2 → relu2 → GAP → fc; `drop_relu`: the target lost relu1."""
    body = [helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1] * 4)]
    body += [] if drop_relu else [helper.make_node("Relu", ["c1"], ["a1"], name="relu1")]
    body += [helper.make_node("Conv", ["c1" if drop_relu else "a1", "w2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["feat"], name="flatten"),
             helper.make_node("Gemm", ["feat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k)
             for k, v in {"w1": W1, "w2": W2, "fc.w": FC * 20, "fc.b": np.array([-1.0, 0.0, 1.0])}.items()]
    graph = helper.make_graph(body, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if data:  # weights in an external file already (as torch.onnx writes a large model)
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".weights", size_threshold=0)
    else:
        onnx.save(model, str(path))
    np.savez(path.with_name("images.npz"), image=IMAGES)
    return path


@pytest.mark.parametrize("data", [False, True], ids=["embedded", "external"])
def test_the_lean_form_runs_and_reads_as_the_model_does(tmp_path, data):
    source = _cnn(tmp_path / "m.onnx", data=data)
    lean_path = lean_onnx.write(source, tmp_path / "lean", "m.onnx")
    assert lean_path.stat().st_size < 2048 and (tmp_path / "lean" / "m.onnx.data").is_file()
    lean = lean_onnx.load(lean_path)
    full = onnx.load(str(source))
    view, full_view = GraphView(lean), GraphView(full)
    for name in ("w1", "w2", "fc.w", "fc.b"):
        np.testing.assert_array_equal(view.initializers[name], full_view.initializers[name])
    assert set(view.initializers) == set(full_view.initializers) and view.inputs == ["image"]
    expected = lean_onnx.session(full, ["c2"]).run(["logits", "c2"], {"image": IMAGES})  # the ordinary proto, from bytes
    np.testing.assert_allclose(expected[0], ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
                               .run(["logits"], {"image": IMAGES})[0], rtol=1e-5, atol=1e-5)
    got = lean_onnx.session(lean, ["c2"]).run(["logits", "c2"], {"image": IMAGES})
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-6)
    assert not list((tmp_path / "lean").glob(".probe-*"))  # the session's file is gone once it is read


def test_a_localization_over_lean_irs_says_what_the_ordinary_one_says(tmp_path, monkeypatch):
    source = _cnn(tmp_path / "source.onnx")
    target = _cnn(tmp_path / "target.onnx", drop_relu=True)
    config = CheckConfig(rounds=1, samples=64, data=tmp_path / "images.npz", localize=True)
    ordinary = run_check(default_registry(), source, target, config).localization
    monkeypatch.setattr(lean_onnx, "LEAN_BYTES", 0)
    loaded, load = [], lean_onnx.load
    monkeypatch.setattr(lean_onnx, "load", lambda path: loaded.append(path) or load(path))
    lean = run_check(default_registry(), source, target, config).localization
    assert len(loaded) == 2  # both IRs parsed in their lean form (weights left in the data file)
    assert ordinary["fault"]["type"] == "graph_structure" and ordinary["fault"]["node"] == "relu1", ordinary["fault"]
    assert lean["fault"] == ordinary["fault"] and lean["first_divergent"]["node"] == ordinary["first_divergent"]["node"]
    assert [row["status"] for row in lean["layers"]] == [row["status"] for row in ordinary["layers"]]
    np.testing.assert_allclose([row["rel_l2"] for row in lean["layers"]], [row["rel_l2"] for row in ordinary["layers"]],
                               rtol=1e-5, atol=1e-7)
    assert lean["shadow"]["confirmed"] == ordinary["shadow"]["confirmed"]
    assert lean["static_diff"] == ordinary["static_diff"]
