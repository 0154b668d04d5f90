"""The hostile-model corpus: files built to make a loader read, write or run what it should not.
Each goes through the real CLI (`check`), is refused in one line with exit 2, and leaves what it
aimed at untouched."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from test_scan import build, hostile_models


def _one_line_exit_2(result, *words: str) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.code == 2, (result.code, result.stdout[-2000:], result.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _onnx_model(folder: Path, weights_location: str | None = None, dims: tuple[int, ...] = (64, 10)) -> Path:
    """x [N,1,8,8] → Flatten → MatMul(W) → y [N,10]; W inline, or external at `weights_location`."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("W", TensorProto.FLOAT, (64, 10), np.zeros(640, np.float32).tolist())
    weights.dims[:] = dims
    if weights_location is not None:
        weights.ClearField("float_data")
        weights.data_location = TensorProto.EXTERNAL
        for key, value in (("location", weights_location), ("offset", "0"), ("length", str(64 * 10 * 4))):
            entry = weights.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def keys(tmp_path) -> Path:
    key = tmp_path / "keys" / "service.key"
    key.parent.mkdir()
    key.write_bytes(bytes(range(256)) * 10)  # 2560 bytes: exactly the size of W
    return key


def test_onnx_external_data_outside_its_folder_is_not_read(cli, fixtures_dir, tmp_path, keys, contained):
    model = _onnx_model(tmp_path / "registry" / "m" / "1", "../../../keys/service.key")
    _one_line_exit_2(cli("check", model, model, "--data", fixtures_dir / "digits_test_nchw.npz", "--rounds", "1"), "model.onnx")


def test_onnx_external_data_through_a_link_to_a_key_is_not_read(cli, fixtures_dir, tmp_path, keys, contained):
    """`model.onnx.data` beside the model, a link to the service key: the worker is granted the
    model's companions, never what a companion links to."""
    folder = tmp_path / "registry" / "m" / "1"
    model = _onnx_model(folder, "model.onnx.data")
    (folder / "model.onnx.data").symlink_to(keys)
    _one_line_exit_2(cli("check", model, model, "--data", fixtures_dir / "digits_test_nchw.npz", "--rounds", "1"))


def test_onnx_with_absurd_dims_is_refused(cli, fixtures_dir, tmp_path, contained):
    model = _onnx_model(tmp_path / "m", dims=(1 << 31, 1 << 31))
    _one_line_exit_2(cli("check", model, model, "--data", fixtures_dir / "digits_test_nchw.npz", "--rounds", "1"), "model.onnx")


@pytest.mark.parametrize("name", ["model.onnx", "model.pt", "model.keras", "model.pt2", "model.tflite"])
def test_a_pickle_under_another_name_is_never_unpickled(cli, fixtures_dir, tmp_path, name):
    marker = tmp_path / "unpickled"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Boom(str(marker)), protocol=4))
    _one_line_exit_2(cli("check", path, path, "--data", fixtures_dir / "digits_test_nchw.npz", "--rounds", "1"), name)
    torch_save = tmp_path / ("ckpt-" + name)  # a torch.save-style zip: data.pkl and no code
    with zipfile.ZipFile(torch_save, "w") as archive:
        archive.writestr("ckpt/data.pkl", pickle.dumps(_Boom(str(marker)), protocol=4))
        archive.writestr("ckpt/version", "3")
    _one_line_exit_2(cli("check", torch_save, torch_save, "--data", fixtures_dir / "digits_test_nchw.npz", "--rounds", "1"))
    assert not marker.exists()


class _Boom:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


TORCHSCRIPT_SETSTATE = """
import sys, zipfile, torch
from typing import Tuple

class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = 1

    def forward(self, x):
        return torch.flatten(x, 1)[:, :10]

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, bool]:
        return (self.k, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, bool]) -> None:
        self.k = state[0]
        self.training = state[1]

torch.jit.script(M()).save(sys.argv[1] + ".base")
src = zipfile.ZipFile(sys.argv[1] + ".base")
with zipfile.ZipFile(sys.argv[1], "w") as out:
    for info in src.infolist():
        data = src.read(info.filename)
        if info.filename.endswith("code/__torch__.py"):
            hidden = f'    _m = (torch.from_file  # c\\n )("{sys.argv[2]}", True, 4)\\n'
            data = data.decode().replace("    self.k = (state)[0]\\n", hidden + "    self.k = (state)[0]\\n").encode()
            assert b"from_file" in data
        out.writestr(info, data)
"""


@pytest.mark.slow
def test_torchscript_hiding_a_file_write_in_setstate_is_refused_before_loading(cli, fixtures_dir, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    model = tmp_path / "setstate.pt"
    build(TORCHSCRIPT_SETSTATE, model, victim)
    args = ["check", model, model, "--data", fixtures_dir / "digits_test_nchw.npz", "--rounds", "1"]
    _one_line_exit_2(cli(*args), "setstate.pt", "aten::from_file")
    uncontained = subprocess.run([sys.executable, "-m", "convrepair", *map(str, args), "--trust-model-code"],
                                 capture_output=True, text=True, timeout=300, env=dict(os.environ, CONVREPAIR_CONTAIN="off"))
    _one_line_exit_2(SimpleNamespace(code=uncontained.returncode, stdout=uncontained.stdout, stderr=uncontained.stderr), "aten::from_file")
    assert victim.read_text() == "original"


@pytest.mark.slow
def test_savedmodel_and_torchscript_writers_are_refused(cli, fixtures_dir, tmp_path_factory):
    writers = hostile_models(tmp_path_factory)
    writers["victim"].write_text("original")
    for model, op in ((writers["torchscript"], "aten::from_file"), (writers["savedmodel"], "WriteFile")):
        _one_line_exit_2(cli("check", model, model, "--data", fixtures_dir / "digits_test_nchw.npz"), op)
    assert writers["victim"].read_text() == "original" and not writers["created"].exists()


KERAS_LAMBDA = """
import sys
import keras

inputs = keras.Input((8, 8, 1))
x = keras.layers.Flatten()(inputs)
x = keras.layers.Lambda(lambda t: (open(sys.argv[2], "w").write("ran"), t)[1])(x)
outputs = keras.layers.Dense(10)(x)
keras.Model(inputs, outputs).save(sys.argv[1])
"""


@pytest.mark.slow
def test_keras_with_a_lambda_layer_is_refused_and_its_code_never_runs(cli, fixtures_dir, tmp_path):
    marker = tmp_path / "lambda_ran"
    model = tmp_path / "lambda.keras"
    build(KERAS_LAMBDA, model, marker)
    marker.unlink(missing_ok=True)  # building it ran the lambda once
    _one_line_exit_2(cli("check", model, model, "--data", fixtures_dir / "digits_test_nhwc.npz", "--rounds", "1"), "lambda.keras")
    assert not marker.exists()
