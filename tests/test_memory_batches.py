"""Batches sized by memory, not count (issue 21): the first small batch measures a model's bytes
per sample; later batches hold what the budget allows, and the outputs are the same."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from test_engine_judgement import _save

from convrepair.data import Dataset
from convrepair.job import JobContext
from convrepair.plugins import default_registry


def wide(path):
    """One 3×3 conv to 64 channels at 128×128: 4 MB of activation per sample."""
    w = np.random.default_rng(0).normal(0, 0.1, (64, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["features"])]
    return _save(nodes, [numpy_helper.from_array(w, "w")],
                 [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 128, 128])],
                 [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 64, 128, 128])], path)


def test_a_small_budget_makes_small_batches_with_the_same_outputs(tmp_path):
    source = wide(tmp_path / "wide.onnx")
    data = Dataset([np.random.default_rng(1).uniform(0, 1, (24, 3, 128, 128)).astype(np.float32)], None, ["NCHW"], "x")
    indices = np.arange(24)
    with JobContext(default_registry(), memory_mb=64) as tight, JobContext(default_registry(), memory_mb=1 << 16) as roomy:
        small, large = tight.model(source), roomy.model(source)
        out_small = tight.outputs(small, data, indices)[0]
        out_large = roomy.outputs(large, data, indices)[0]
        assert small.bytes_per_sample >= 64 * 128 * 128 * 4  # at least its output, measured on the first batch
        assert tight.batch_for(small, 256) <= 16 < roomy.batch_for(large, 256)
        np.testing.assert_allclose(out_small, out_large, rtol=1e-6, atol=1e-6)


def test_the_default_budget_is_a_share_of_the_workers_own_limit():
    """A contained worker under `--memory-mb 2048` (RLIMIT_DATA) batches within a quarter of it."""
    import subprocess
    import sys

    code = ("import resource; resource.setrlimit(resource.RLIMIT_DATA, (2048 << 20, resource.RLIM_INFINITY)); "
            "from convrepair import memory; print(memory.budget(None) >> 20, memory.budget(100) >> 20)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["512", "100"]


def test_taking_consecutive_samples_is_a_view_and_others_a_copy():
    """A check over all the data takes every sample: no second copy of the inputs (issue 21)."""
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    data = Dataset([x], np.arange(10), ["NC"], "x")
    every = data.take(np.arange(10))
    assert np.shares_memory(every.inputs[0], x) and np.array_equal(every.labels, np.arange(10))
    middle = data.take(np.array([3, 4, 5]))
    assert np.shares_memory(middle.inputs[0], x) and np.array_equal(middle.inputs[0], x[3:6])
    picked = data.take(np.array([1, 4, 5]))
    assert not np.shares_memory(picked.inputs[0], x) and np.array_equal(picked.inputs[0], x[[1, 4, 5]])
    assert np.array_equal(data.take(np.array([5, 4, 3])).inputs[0], x[[5, 4, 3]])
    assert len(data.take(np.array([], dtype=np.int64))) == 0
