"""Format detection by content, digests, and the layout guess."""

from __future__ import annotations

import shutil

import pytest

from convrepair.errors import BadInput
from convrepair.fsutil import sha256_file
from convrepair.model import guess_layout, model_ref
from convrepair.plugins import default_registry


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("keras_cnn.keras", "keras"),
        ("keras_cnn.savedmodel", "savedmodel"),
        ("torch_cnn.pt2", "pt2"),
        ("torch_cnn.pt", "torchscript"),
    ],
)
def test_fixture_formats_are_detected(fixtures_dir, name, fmt):
    ref = model_ref(fixtures_dir / name, default_registry())
    assert ref.format == fmt
    assert len(ref.sha256) == 64


def test_detection_reads_content_not_extension(work):
    renamed = work / "mystery.bin"
    shutil.copy(work / "keras_cnn.keras", renamed)
    assert model_ref(renamed, default_registry()).format == "keras"
    shutil.copy(work / "torch_cnn.pt2", renamed)
    assert model_ref(renamed, default_registry()).format == "pt2"


def test_single_file_digest_is_the_file_sha256(fixtures_dir):
    path = fixtures_dir / "torch_cnn.pt2"
    assert model_ref(path, default_registry()).sha256 == sha256_file(path)


def test_savedmodel_digest_covers_every_file(work):
    saved = work / "keras_cnn.savedmodel"
    before = model_ref(saved, default_registry())
    assert "saved_model.pb" in before.files
    assert any(name.startswith("variables/") for name in before.files)
    index = saved / "variables" / "variables.index"
    index.write_bytes(index.read_bytes() + b"\0")
    after = model_ref(saved, default_registry())
    assert after.sha256 != before.sha256


def test_unknown_content_is_a_bad_input(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a model")
    with pytest.raises(BadInput, match="not a model format"):
        model_ref(path, default_registry())


@pytest.mark.parametrize(
    "shape, layout",
    [((None, 8, 8, 1), "NHWC"), ((None, 3, 224, 224), "NCHW"), ((None, 64), "NC"), ((None, 5, 5, 5), "any")],
)
def test_guess_layout(shape, layout):
    assert guess_layout(shape) == layout
