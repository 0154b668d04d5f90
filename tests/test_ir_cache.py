"""The source's ONNX IR, once per source (issue 21): kept in a cache keyed by everything that
changes the export, exported ahead in a contained worker of its own, never trusted on the key
alone — a hit is still held to its fidelity, a broken entry is no entry. One real export
(tf2onnx, the Keras CNN fixture) serves the whole module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convrepair import ircache
from convrepair.check import CheckConfig, job_dataset
from convrepair.fsutil import sha256_file
from convrepair.ir_export import export_ahead
from convrepair.job import JobContext
from convrepair.model import model_ref
from convrepair.plugins import default_registry
from convrepair.sidecar import read_sidecar


@pytest.fixture(scope="module")
def exported(fixtures_dir, tmp_path_factory):
    """A cache holding the Keras CNN's IR, exported ahead (a contained worker where one can be had)."""
    cache = tmp_path_factory.mktemp("ir-cache")
    registry = default_registry()
    ahead = export_ahead(registry, fixtures_dir / "keras_cnn.keras", {}, cache=cache)
    assert ahead.how in ("contained worker", "cached"), ahead
    (entry,) = ahead.reads
    return {"cache": cache, "entry": entry, "registry": registry, "source": fixtures_dir / "keras_cnn.keras",
            "data": fixtures_dir / "digits_test_nhwc.npz"}


def _ir(exported, cache: Path, options: dict | None = None):
    """The source's IR in a fresh job reading `cache`: (OnnxIR, exports the job ran)."""
    with JobContext(exported["registry"], ir_cache=cache) as job:
        handle = job.model(exported["source"])
        samples = job_dataset(job, handle, CheckConfig(data=exported["data"])).take(np.arange(16))
        ir = job.onnx_ir(handle, samples, options or {})
        return ir, job.counts["export"]


def _copy(exported, tmp_path) -> tuple[Path, Path]:
    cache = tmp_path / "cache"
    shutil.copytree(exported["cache"], cache)
    return cache, cache / exported["entry"].name


def test_a_hit_skips_the_export_and_is_still_held_to_its_fidelity(exported, tmp_path):
    cache, _ = _copy(exported, tmp_path)
    ir, exports = _ir(exported, cache)
    assert exports == 0 and ir.exported == "cached"
    assert ir.origin == "keras-to-onnx"
    assert ir.fidelity_rel_l2 < 1e-5  # measured on this job's samples, not read from the entry
    assert not ir.path.is_relative_to(cache)  # the job's own copy: a repair may edit it, the cache never


def test_the_fidelity_of_a_hit_is_measured_not_trusted(exported, tmp_path):
    """A whole entry (every hash right) whose IR is not the model's: the fidelity shows it."""
    cache, entry = _copy(exported, tmp_path)
    meta = json.loads((entry / ircache.ENTRY).read_text())
    ir_file = entry / meta["ir"]
    model = onnx.load(str(ir_file))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 3.0, weight.name))
    onnx.save(model, str(ir_file))
    meta["files"][meta["ir"]] = sha256_file(ir_file)
    (entry / ircache.ENTRY).write_text(json.dumps(meta))
    ir, exports = _ir(exported, cache)
    assert exports == 0 and ir.exported == "cached"
    assert ir.fidelity_rel_l2 > 1e-2, ir


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no entry.json", "torn entry.json", "stray file"])
def test_a_broken_entry_is_no_entry(exported, tmp_path, damage):
    cache, entry = _copy(exported, tmp_path)
    meta = json.loads((entry / ircache.ENTRY).read_text())
    ir_file = entry / meta["ir"]
    if damage == "flipped byte":
        data = bytearray(ir_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        ir_file.write_bytes(bytes(data))
    elif damage == "truncated":
        ir_file.write_bytes(ir_file.read_bytes()[: ir_file.stat().st_size // 2])
    elif damage == "no entry.json":
        (entry / ircache.ENTRY).unlink()
    elif damage == "torn entry.json":
        (entry / ircache.ENTRY).write_text((entry / ircache.ENTRY).read_text()[:40])
    else:  # a name that would lead out of the entry
        meta["files"]["../../elsewhere"] = meta["files"][meta["ir"]]
        (entry / ircache.ENTRY).write_text(json.dumps(meta))
    assert ircache.lookup(cache, entry.name) is None
    assert not entry.exists()  # removed, so the next export can take its place


def test_a_writer_that_died_leaves_nothing_a_lookup_takes(exported, tmp_path):
    """A half-written entry lives only in its temporary folder, which no key names."""
    cache, entry = _copy(exported, tmp_path)
    stage = cache / f".tmp-{entry.name[:16]}-dead"
    entry.rename(stage)
    (stage / ircache.ENTRY).unlink()
    assert ircache.lookup(cache, entry.name) is None


def test_the_key_changes_with_everything_that_changes_the_export(exported, tmp_path):
    registry = exported["registry"]
    ref = model_ref(exported["source"], registry)
    sidecar = read_sidecar(ref.path)
    key = ircache.key_for(registry, ref, sidecar, {})
    assert key == exported["entry"].name  # the worker's export was kept under the key computed here
    other_options = ircache.key_for(registry, ref, sidecar, {"opset": "13"})
    other_source = ircache.key_for(registry, ref.__class__(ref.path, ref.format, "0" * 64, ref.files), sidecar, {})
    sidecar_changed = read_sidecar(ref.path)
    sidecar_changed.input_layout = ["NCHW"]
    other_sidecar = ircache.key_for(registry, ref, sidecar_changed, {})
    assert len({key, other_options, other_source, other_sidecar}) == 4
    for changed in (other_options, other_source, other_sidecar):
        assert ircache.lookup(exported["cache"], changed) is None
    versions = ircache._versions(("tf2onnx", "tensorflow", "keras"))
    assert set(versions) >= {"tf2onnx", "keras"} and "absent" not in versions.values()


def test_an_unwritable_or_absent_cache_is_no_error(exported, tmp_path):
    assert ircache.lookup(None, exported["entry"].name) is None
    assert ircache.store(None, "k", [], Path("x"), {}) is None
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    ir_file = next(exported["entry"].glob("*.onnx"))
    assert ircache.store(blocked, "k" * 64, [ir_file], ir_file, {}) is None


def test_cache_folder_follows_use_then_environment(monkeypatch, tmp_path):
    monkeypatch.delitem(ircache._chosen, "dir", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(ircache.ENV, raising=False)
    assert ircache.cache_dir() == tmp_path / "xdg" / "convrepair" / "ir"
    monkeypatch.setenv(ircache.ENV, str(tmp_path / "mine"))
    assert ircache.cache_dir() == tmp_path / "mine"
    monkeypatch.setenv(ircache.ENV, "off")
    assert ircache.cache_dir() is None
    ircache.use(tmp_path / "state" / "ir-cache")
    try:
        assert ircache.cache_dir() == tmp_path / "state" / "ir-cache"
    finally:
        ircache._chosen.pop("dir", None)


def test_the_daemons_conversion_is_the_export_localization_reads(exported, tmp_path):
    """convert → check → repair exports the source once: the job's own keras → onnx conversion (a
    worker of its own) is kept as the source's IR, and the check's job finds it there."""
    from types import SimpleNamespace

    from convrepair.daemon.job import convert_ahead

    registry, cache, scratch = exported["registry"], tmp_path / "ir-cache", tmp_path / "scratch"
    scratch.mkdir()
    source = tmp_path / "model.keras"
    shutil.copy(exported["source"], source)
    shutil.copy(exported["source"].with_name("keras_cnn.keras.convrepair.json"), tmp_path / "model.keras.convrepair.json")
    config = SimpleNamespace(calibration=None, trust_model_code=False)
    converted, reads = convert_ahead(registry, {"model_file": str(source), "target": "onnx"}, scratch, [source], config, cache)
    assert converted.is_relative_to(scratch) and converted.suffix == ".onnx"
    (entry,) = reads
    assert json.loads((entry / ircache.ENTRY).read_text())["meta"]["where"] == "the job's conversion"
    with JobContext(registry, ir_cache=cache) as job:
        assert job.prepare_ir(job.model(source), {}) == "cached"
        assert job.counts["export"] == 0


def test_a_large_sources_ir_is_lean_and_measured_one_model_at_a_time(exported, tmp_path, monkeypatch):
    """Past lean_onnx.LEAN_BYTES (0 here) the job's copy of a cached IR is its lean form, and its
    fidelity is measured with the source's outputs computed and its runner closed before the IR
    loads: the same fidelity, never both models in memory at once."""
    from convrepair import lean_onnx

    cache, _ = _copy(exported, tmp_path)
    monkeypatch.setattr(lean_onnx, "LEAN_BYTES", 0)
    with JobContext(exported["registry"], ir_cache=cache) as job:
        handle = job.model(exported["source"])
        samples = job_dataset(job, handle, CheckConfig(data=exported["data"])).take(np.arange(16))
        ir = job.onnx_ir(handle, samples, {})
        assert handle.runner is None  # closed before the IR was loaded (a later job.runner loads it again)
        assert ir.exported == "cached" and ir.fidelity_rel_l2 < 1e-5
        assert ir.path.with_name(ir.path.name + ".data").is_file() and ir.path.stat().st_size < 64 << 10
        proto, view = job.graph(ir.path)
        assert lean_onnx.home_of(proto) == ir.path.parent  # read in place: the job's copy is lean already
        assert len(list(ir.path.parent.iterdir())) == 2
