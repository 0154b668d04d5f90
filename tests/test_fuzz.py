"""No input ends in exit 70: model bytes, .npz bytes and convrepair.toml, fuzzed (hypothesis).

Every example runs the real CLI — contained workers included — inside one long-lived server
process that imports no framework itself (so its forks are clean and each example costs a fork,
not an interpreter start). Examples are derandomized: the same inputs on every run.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ALLOWED = {0, 1, 2}
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])

# Reads one JSON argv per line, runs the CLI's main() on it, answers {"code": …, "stderr": …}.
SERVER = r"""
import json, os, sys, tempfile
from convrepair.cli import main

answers = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_WRONLY)
for line in sys.stdin:
    argv = json.loads(line)
    with tempfile.TemporaryFile() as err:
        os.dup2(null, 1)
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        sys.argv = ["convrepair", *argv]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")[-2000:]
    answers.write(json.dumps({"code": code, "stderr": text}) + "\n")
    answers.flush()
"""


class Cli:
    def __init__(self, cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, cwd=cwd,
                                     env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200"))

    def __call__(self, *args) -> tuple[int, str]:
        self.proc.stdin.write(json.dumps([str(a) for a in args]) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return answer["code"], answer["stderr"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cli = Cli(tmp_path_factory.mktemp("fuzz-cwd"))
    yield cli
    cli.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory, fixtures_dir, server) -> dict[str, Path]:
    """A real ONNX model (the torch fixture converted) and data that fit it."""
    root = tmp_path_factory.mktemp("fuzz-base")
    code, err = server("convert", fixtures_dir / "torch_cnn.pt2", "--to", "onnx", "--out", root / "model.onnx")
    assert code == 0, err
    with np.load(fixtures_dir / "digits_test_nchw.npz") as archive:
        x, y = archive["x"][:40], archive["y"][:40]
    np.savez(root / "data.npz", x=x, y=y)
    return {"root": root, "onnx": root / "model.onnx", "pt2": fixtures_dir / "torch_cnn.pt2", "data": root / "data.npz",
            "x": x, "y": y}


def _assert_allowed(code: int, stderr: str, what: str) -> None:
    assert code in ALLOWED, f"{what}: exit {code}\n{stderr}"
    if code == 2:
        assert "Traceback" not in stderr, stderr


# --- model files ----------------------------------------------------------------------------------

def _mutated(data: bytes, draw) -> bytes:
    blob = bytearray(data)
    for _ in range(draw(st.integers(1, 12))):
        at = draw(st.integers(0, len(blob) - 1))
        blob[at] = draw(st.integers(0, 255))
    return bytes(blob)


def _random_zip(draw) -> bytes:
    names = draw(st.lists(st.sampled_from([
        "archive/archive_format", "archive/version", "config.json", "metadata.json", "model.weights.h5",
        "m/code/__torch__.py", "m/data.pkl", "m/constants.pkl", "model.onnx", "random.bin"]), min_size=1, max_size=5, unique=True))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"{}", b"[]", b'{"a": 1}', b"1"]))))
    return buffer.getvalue()


@st.composite
def model_files(draw, onnx: bytes, pt2: bytes) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["mutated-onnx", "mutated-onnx", "mutated-onnx", "truncated-onnx", "truncated-pt2",
                                 "zip", "bytes"]))
    if kind == "mutated-onnx":
        return ".onnx", _mutated(onnx, draw)
    if kind == "truncated-onnx":
        return ".onnx", onnx[: draw(st.integers(0, len(onnx) - 1))]
    if kind == "truncated-pt2":
        return ".pt2", pt2[: draw(st.integers(0, len(pt2) - 1))]
    if kind == "zip":
        return draw(st.sampled_from([".pt2", ".keras", ".pt", ".onnx"])), _random_zip(draw)
    return draw(st.sampled_from([".onnx", ".tflite", ".pt"])), draw(st.binary(max_size=512))


@pytest.mark.slow
def test_fuzzed_model_files_never_end_in_exit_70(server, base, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-models")
    onnx, pt2 = base["onnx"].read_bytes(), base["pt2"].read_bytes()

    @settings(FUZZ, max_examples=24)
    @given(model=model_files(onnx, pt2))
    def run(model):
        suffix, content = model
        path = root / f"fuzzed{suffix}"
        path.write_bytes(content)
        code, err = server("check", base["onnx"], path, "--data", base["data"], "--rounds", "1", "--samples", "10")
        _assert_allowed(code, err, f"{len(content)} bytes as {suffix}")

    run()


# --- .npz data ------------------------------------------------------------------------------------

@st.composite
def npz_files(draw, x: np.ndarray, y: np.ndarray) -> bytes:
    kind = draw(st.sampled_from(["arrays", "arrays", "arrays", "truncated", "mutated"]))
    buffer = io.BytesIO()
    if kind == "arrays":
        dtype = draw(st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "complex64", "U3", "S2", "O"]))
        shape = draw(st.sampled_from([x.shape, x.shape[:1], (len(x), 64), (0, *x.shape[1:]), (len(x), 1, 4, 4), ()]))
        values = draw(st.sampled_from(["data", "nan", "inf", "huge", "zeros"]))
        arrays = {}
        if draw(st.booleans()):
            source = x if shape == x.shape else np.resize(x, shape)
            if values == "nan":
                source = source.copy()
                source.flat[0] = np.nan
            elif values == "inf":
                source = source.copy()
                source.flat[-1:] = np.inf
            elif values == "huge":
                source = source * 1e30
            elif values == "zeros":
                source = np.zeros_like(source)
            arrays[draw(st.sampled_from(["x", "input", "X"]))] = source.astype(dtype) if dtype != "O" else source.astype(object)
        label_kind = draw(st.sampled_from(["none", "int", "onehot", "notonehot", "float", "short", "strings"]))
        if label_kind == "int":
            arrays["y"] = y
        elif label_kind == "onehot":
            arrays["y"] = np.eye(10, dtype=np.float32)[y]
        elif label_kind == "notonehot":
            arrays["y"] = np.eye(10, dtype=np.float32)[y] * 0.5
        elif label_kind == "float":
            arrays["y"] = y.astype(np.float64) + 0.25
        elif label_kind == "short":
            arrays["y"] = y[:3]
        elif label_kind == "strings":
            arrays["y"] = y.astype("U2")
        np.savez(buffer, **arrays)
        return buffer.getvalue()
    np.savez(buffer, x=x, y=y)
    valid = buffer.getvalue()
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    return _mutated(valid, draw)


@pytest.mark.slow
def test_fuzzed_npz_data_never_ends_in_exit_70(server, base, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-npz")

    @settings(FUZZ, max_examples=24)
    @given(content=npz_files(base["x"], base["y"]))
    def run(content):
        path = root / "fuzzed.npz"
        path.write_bytes(content)
        code, err = server("check", base["onnx"], base["onnx"], "--data", path, "--rounds", "1", "--samples", "10")
        _assert_allowed(code, err, f"{len(content)} bytes of npz")

    run()


# --- convrepair.toml ------------------------------------------------------------------------------

_KEYS = ["targets", "data", "calibration", "regression", "lenses", "tolerances", "repair", "policy", "atol", "unknown"]
_SCALARS = st.one_of(st.booleans(), st.integers(-5, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=12), st.sampled_from(["onnx", "onnx-int8", "all", "none", "restore", "data.npz", "../x"]))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value > 0 else "-inf") if value in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


@st.composite
def toml_texts(draw) -> str:
    kind = draw(st.sampled_from(["structured", "structured", "structured", "text", "mutated"]))
    valid = 'targets = ["onnx"]\n[tolerances]\natol = 0.1\n[repair]\npolicy = "restore"\nbudget_seconds = 5\n'
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "mutated":
        return _mutated(valid.encode(), draw).decode("utf-8", "replace")
    lines = []
    for key in draw(st.lists(st.sampled_from(_KEYS), max_size=5, unique=True)):
        value = draw(st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3)))
        lines.append(f"{key} = {_toml_value(value)}")
    for table in draw(st.lists(st.sampled_from(["tolerances", "repair", "lenses", "extra"]), max_size=2, unique=True)):
        lines.append(f"[{table}]")
        for key in draw(st.lists(st.sampled_from(["atol", "rtol", "policy", "budget_seconds", "prefer", "x"]), max_size=3, unique=True)):
            lines.append(f"{key} = {_toml_value(draw(_SCALARS))}")
    return "\n".join(lines) + "\n"


def test_fuzzed_convrepair_toml_never_ends_in_exit_70(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-toml")
    (root / "data.npz").write_bytes(b"")

    @settings(FUZZ, max_examples=80)
    @given(text=toml_texts())
    def run(text):
        path = root / "convrepair.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        code, err = server("config", "validate", path)
        _assert_allowed(code, err, f"config {text!r}")

    run()
