"""What a Ray job carries: its inputs as one tar that resolves the same on any node, and its
results landed in the registry once, with the daemon's paths (no Ray cluster needed)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from convrepair.daemon.executors import bundle


def _registry(root: Path) -> Path:
    model = root / "registry" / "digits"
    (model / "1" / "convrepair" / "onnx").mkdir(parents=True)
    (root / "registry" / "shared").mkdir()
    (root / "registry" / "shared" / "data.npz").write_bytes(b"samples")
    (model / "convrepair.toml").write_text('targets = ["onnx"]\ndata = "../shared/data.npz"\n')
    (model / "1" / "model.onnx").write_bytes(b"model")
    (model / "1" / "model.onnx.convrepair.json").write_text("{}")
    (model / "1" / "convrepair" / "onnx" / "repair.json").write_text("{}")  # a result: never an input
    return model / "1"


def test_inputs_travel_with_the_config_and_the_files_it_names_but_not_the_results(tmp_path):
    from convrepair.daemon.config import load_model_config

    version = _registry(tmp_path)
    shared = tmp_path / "registry" / "shared"
    node = tmp_path / "node"
    bundle.unpack(bundle.pack_inputs(version, allowed=[shared]), node)  # data beside the model: granted with --allow-read
    mirror = bundle.mirrored(node / "fs", version)
    assert (mirror / "model.onnx").read_bytes() == b"model" and (mirror / "model.onnx.convrepair.json").exists()
    assert not (mirror / "convrepair").exists()
    config = load_model_config(mirror.parent / "convrepair.toml", ["onnx"],  # relative paths resolve inside the mirror
                               allowed=[bundle.mirrored(node / "fs", shared)])
    assert config.data == bundle.mirrored(node / "fs", shared / "data.npz").resolve()
    assert config.data.read_bytes() == b"samples"


def test_a_file_no_job_may_read_never_leaves_the_daemon(tmp_path):
    version = _registry(tmp_path)
    shared = tmp_path / "registry" / "shared"
    assert shared / "data.npz" not in bundle.input_files(version)  # not granted: the node never gets it
    assert shared / "data.npz" not in bundle.input_files(version, allowed=[shared], never=[shared / "data.npz"])
    assert shared / "data.npz" in bundle.input_files(version, allowed=[shared])


def test_results_land_once_with_the_daemons_paths(tmp_path):
    version = _registry(tmp_path)
    final = version / "convrepair" / "onnx-fp16"
    worker_root = "/tmp/convrepair-ray-7-abc/fs"
    results = tmp_path / "worker-results"
    (results / "converted").mkdir(parents=True)
    (results / "converted" / "model.onnx").write_bytes(b"converted")
    worker_final = worker_root + str(final)
    (results / "repair.json").write_text(json.dumps({
        "source": {"path": worker_root + str(version / "model.onnx")},
        "target": {"path": worker_final + "/converted/model.onnx"},
        "note": "unrelated /tmp/convrepair-ray-7-abc/fsx stays"}))
    scratch = version / "convrepair" / ".tmp-job1-attempt1-landing"
    assert bundle.land(bundle.pack_dir(results), worker_root, final, scratch, {"executor": {"kind": "ray"}})
    report = json.loads((final / "repair.json").read_text())
    assert report["source"]["path"] == str(version / "model.onnx")
    assert report["target"]["path"] == str(final / "converted" / "model.onnx")
    assert report["note"] == "unrelated /tmp/convrepair-ray-7-abc/fsx stays" and report["executor"] == {"kind": "ray"}
    assert (final / "converted" / "model.onnx").read_bytes() == b"converted" and not scratch.exists()
    # a second result for the same target (a retry that raced the first) is dropped, never merged
    assert not bundle.land(bundle.pack_dir(results), worker_root, final, scratch, {})
    assert not scratch.exists() and json.loads((final / "repair.json").read_text())["executor"] == {"kind": "ray"}


def _tar(name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


def test_a_tar_cannot_write_outside_its_folder(tmp_path):
    with pytest.raises(tarfile.TarError):  # tarfile's `data` filter
        bundle.unpack(_tar("../outside"), tmp_path / "into")
    assert not (tmp_path / "outside").exists()
    absolute = tmp_path / "absolute"
    bundle.unpack(_tar(str(absolute)), tmp_path / "into")  # a leading / is dropped: it lands inside
    assert not absolute.exists() and (tmp_path / "into" / str(absolute).lstrip("/")).exists()
