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


# --- data (.npz) ----------------------------------------------------------------------------------

def _digits(fixtures_dir, count=60):
    import numpy as np

    with np.load(fixtures_dir / "digits_test_nchw.npz") as archive:
        return archive["x"][:count], archive["y"][:count]


def _specs():
    from convrepair.model import TensorSpec

    return [TensorSpec("input", (None, 1, 8, 8), "float32", "NCHW")]


@pytest.mark.parametrize(("arrays", "message"), [
    ("nan", "NaN or Inf"), ("inf", "NaN or Inf"), ("strings", "not numbers"), ("complex", "not numbers"),
    ("object", "not a readable .npz"), ("fractional_y", "fractional"), ("soft_y", "not one-hot"),
    ("negative_y", "negative"), ("short_y", "labels for"),
])
def test_bad_data_is_one_clear_error(fixtures_dir, tmp_path, arrays, message):
    import numpy as np

    from convrepair.data import load_npz
    from convrepair.errors import BadInput

    x, y = _digits(fixtures_dir)
    content = {"x": x, "y": y}
    if arrays == "nan":
        content["x"] = x.copy()
        content["x"][3, 0, 2, 2] = np.nan
    elif arrays == "inf":
        content["x"] = np.full_like(x, np.inf)
    elif arrays == "strings":
        content["x"] = x.astype("U4")
    elif arrays == "complex":
        content["x"] = x.astype(np.complex64)
    elif arrays == "object":
        content["x"] = x.astype(object)
    elif arrays == "fractional_y":
        content["y"] = y + 0.5
    elif arrays == "soft_y":
        content["y"] = np.full((len(y), 10), 0.1, dtype=np.float32)
    elif arrays == "negative_y":
        content["y"] = y - 100
    elif arrays == "short_y":
        content["y"] = y[:5]
    path = tmp_path / "bad.npz"
    np.savez(path, **content)  # object arrays are pickled: the loader must refuse them, not unpickle
    with pytest.raises(BadInput, match=message) as caught:
        load_npz(path, _specs())
    assert caught.value.path == path and "\n" not in caught.value.one_line()


def test_one_hot_labels_become_classes(fixtures_dir, tmp_path):
    import numpy as np

    from convrepair.data import load_npz

    x, y = _digits(fixtures_dir)
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(10, dtype=np.float32)[y])
    assert np.array_equal(load_npz(tmp_path / "onehot.npz", _specs()).labels, y)


def test_nan_data_is_refused_by_check(cli, fixtures_dir, tmp_path):
    """All-NaN data once gave 'equivalent, 100%'."""
    import numpy as np

    x, y = _digits(fixtures_dir)
    np.savez(tmp_path / "nan.npz", x=np.full_like(x, np.nan), y=y)
    result = cli("check", fixtures_dir / "torch_cnn.pt2", fixtures_dir / "torch_cnn.pt", "--data", tmp_path / "nan.npz")
    _assert_one_line_error(result, "nan.npz", "nan or inf")


def test_object_array_data_is_exit_2_not_70(cli, fixtures_dir, tmp_path):
    import numpy as np

    x, y = _digits(fixtures_dir)
    np.savez(tmp_path / "objects.npz", x=x.astype(object), y=y)
    result = cli("check", fixtures_dir / "torch_cnn.pt2", fixtures_dir / "torch_cnn.pt", "--data", tmp_path / "objects.npz")
    _assert_one_line_error(result, "objects.npz", "not a readable .npz")


def test_one_hot_labels_are_accepted_by_check(cli, fixtures_dir, tmp_path):
    """One-hot `y` once crashed with exit 70; it is read as its argmax, and accuracy is reported."""
    import numpy as np

    x, y = _digits(fixtures_dir, 200)
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(10, dtype=np.float32)[y])
    result = cli("check", fixtures_dir / "torch_cnn.pt2", fixtures_dir / "torch_cnn.pt", "--data", tmp_path / "onehot.npz",
                 "--rounds", "2", "--samples", "50", "--json", tmp_path / "r.json")
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["accuracy"]["source"] > 0.5


def test_repair_without_data_is_refused_unless_synthetic(cli, fixtures_dir, tmp_path):
    result = cli("repair", fixtures_dir / "torch_cnn.pt2", fixtures_dir / "torch_cnn.pt", "--out", tmp_path / "fixed.pt")
    assert result.code == 2 and "--synthetic" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_pt2_archive_without_its_records_is_one_line(cli, tmp_path):
    """torch.export.load logs a traceback before it fails on such an archive (found by the fuzz test)."""
    path = tmp_path / "hollow.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/archive_format", b"")
    _assert_one_line_error(cli("convert", path, "--to", "onnx"), "hollow.pt2", "not a loadable torch.export program")
