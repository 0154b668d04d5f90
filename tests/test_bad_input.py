"""Bad model files give one line naming the file, exit 2, no traceback, and never run code."""

from __future__ import annotations

import json
import pickle
import zipfile

import pytest


class _Boom:
    """Unpickling this runs `touch MARKER` — if a loader ever unpickles it, the marker appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _assert_one_line_error(result, path_fragment: str, what: str):
    assert result.code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert path_fragment in lines[0]
    assert what in lines[0].lower()


def test_empty_file(cli, tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _assert_one_line_error(cli("convert", path, "--to", "torch"), "empty.onnx", "empty")


def test_truncated_onnx(cli, tmp_path, fixtures_dir, work):
    source = work / "model.onnx"
    result = cli("convert", work / "torch_cnn.pt2", "--to", "onnx", "--out", source)
    assert result.code == 0, result.stderr
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    _assert_one_line_error(cli("convert", truncated, "--to", "torch"), "truncated.onnx", "not a valid onnx")


def test_random_bytes_named_onnx(cli, tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(bytes(range(256)) * 64)
    _assert_one_line_error(cli("convert", path, "--to", "torch"), "random.onnx", "not a model format")


def test_malicious_raw_pickle_named_pt_never_runs(cli, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Boom(marker)))
    result = cli("convert", path, "--to", "onnx")
    _assert_one_line_error(result, "evil.pt", "pickle")
    assert not marker.exists(), "the pickle's code ran"


def test_malicious_torch_save_checkpoint_never_runs(cli, tmp_path):
    import torch

    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": _Boom(marker)}, path)
    assert not marker.exists()
    result = cli("convert", path, "--to", "onnx")
    _assert_one_line_error(result, "checkpoint.pt", "pickle")
    assert not marker.exists(), "the checkpoint's code ran"


def test_pt2_with_a_malicious_pickled_weight_never_runs(cli, tmp_path, fixtures_dir):
    """torch.export.load unpickles `use_pickle` weights with weights_only=False; ours must not."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(fixtures_dir / "torch_cnn.pt2") as src:
        members = {item.filename: src.read(item.filename) for item in src.infolist()}
    config_name = next(name for name in members if name.endswith("model_weights_config.json"))
    config = json.loads(members[config_name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    members[config_name] = json.dumps(config).encode()
    weight_name = config_name.rsplit("/", 1)[0] + "/" + first["path_name"]
    members[weight_name] = pickle.dumps(_Boom(marker))
    with zipfile.ZipFile(evil, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)
    result = cli("convert", evil, "--to", "onnx")
    assert result.code == 2, result.stderr
    assert "evil.pt2" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists(), "the archive's pickle ran"


def test_directory_that_is_not_a_savedmodel(cli, tmp_path):
    folder = tmp_path / "model.savedmodel"
    folder.mkdir()
    (folder / "readme.txt").write_text("nothing here")
    _assert_one_line_error(cli("convert", folder, "--to", "onnx"), "model.savedmodel", "not a model format")


def test_missing_file(cli, tmp_path):
    _assert_one_line_error(cli("convert", tmp_path / "nope.onnx", "--to", "torch"), "nope.onnx", "no such file")


def test_debug_shows_the_traceback(cli, tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    result = cli("--debug", "convert", path, "--to", "torch")
    assert result.code != 0 and "Traceback" in result.stderr


def test_unknown_target_is_a_usage_error(cli, fixtures_dir):
    result = cli("convert", fixtures_dir / "torch_cnn.pt2", "--to", "coreml")
    assert result.code == 2 and "unknown conversion target 'coreml'" in result.stderr


def test_no_output_left_behind_when_conversion_fails(cli, tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(b"\x08\x07" + bytes(range(200)))  # looks like ONNX, is not
    result = cli("convert", path, "--to", "torch", "--out", tmp_path / "out.pt2")
    assert result.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.onnx"]
