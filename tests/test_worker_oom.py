"""Running out of the contained worker's memory limit is configuration (exit 2, naming
--memory-mb), not a bug in our code or a converter's (exit 70) nor a fault of the model
(issue 18). A 16-feature ONNX model built in code whose Tile makes a 128 MB-per-sample
intermediate: ONNX Runtime's arena cannot allocate it under a 600 MB limit; seconds.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convrepair.contain.worker import memory_limit
from convrepair.errors import BadInput

LIMIT = "600"


def _hungry(path):
    """x (N, 16) → logits (N, 4); a Tile/Sigmoid/ReduceMean branch needs 128 MB per sample."""
    reps = numpy_helper.from_array(np.array([1, 1 << 21], np.int64), "reps")
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (16, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("Tile", ["x", "reps"], ["big"], name="tile"),
             helper.make_node("Sigmoid", ["big"], ["squashed"], name="sig"),
             helper.make_node("ReduceMean", ["squashed"], ["mean"], name="mean", keepdims=1),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="head"),
             helper.make_node("Add", ["h", "mean"], ["logits"], name="add")]
    graph = helper.make_graph(nodes, "hungry", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [reps, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def hungry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oom")
    np.savez(folder / "x.npz", x=np.random.default_rng(0).uniform(-1, 1, (16, 16)).astype(np.float32))
    return _hungry(folder / "hungry.onnx"), folder / "x.npz"


def _says_memory_limit(result, model):
    line = result.stderr.strip().splitlines()[-1]
    assert result.code == 2, result.stderr
    assert line.startswith(f"convrepair: error: {model}: ran out of memory under the worker's {LIMIT} MB limit "
                           "(--memory-mb); raise it or lower --samples/batch"), line
    assert "ONNX Runtime's memory arena could not allocate a buffer" in line


def test_an_arena_oom_in_a_converter_is_exit_2_naming_memory_mb(hungry, cli, contained):
    """Old: static int8 calibration runs the model in ONNX Runtime; its arena failure became
    ConversionFailed, "converter 'onnx-int8' failed: Fail: … Failed to allocate memory", exit 70."""
    model, data = hungry
    out = model.with_name("hungry.int8.onnx")
    result = cli("convert", model, "--to", "onnx-int8", "--calibration", data, "--out", out, "--memory-mb", LIMIT)
    _says_memory_limit(result, model)
    assert not out.exists()


def test_an_arena_oom_while_checking_is_the_limit_not_the_model(hungry, cli, contained):
    """Old: "ONNX Runtime fails to run this model on the given inputs": blamed the model."""
    model, data = hungry
    result = cli("check", model, model, "--data", data, "--rounds", "1", "--samples", "8", "--memory-mb", LIMIT)
    _says_memory_limit(result, model)


@pytest.mark.parametrize("text,cause", [
    ("RuntimeException: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: std::bad_alloc",
     "std::bad_alloc"),
    ("MemoryError: ", "MemoryError"),
    ("the models needed more memory than the worker may use (600 MB; raise --memory-mb)", "MemoryError"),
    ("_ArrayMemoryError: Unable to allocate 1.00 GiB for an array with shape (16, 16777216) and data type float32",
     "Unable to allocate 1.00 GiB"),
])
def test_every_allocation_failure_reads_as_the_limit(text, cause):
    with pytest.raises(BadInput) as caught:
        memory_limit(text, "model.onnx", 600)
    assert caught.value.one_line().startswith("model.onnx: ran out of memory under the worker's 600 MB limit (--memory-mb)")
    assert cause in caught.value.message


def test_other_failures_are_left_as_they_are():
    memory_limit("ValueError: the graph has no output named 'logits'", "model.onnx", 600)  # nothing raised
