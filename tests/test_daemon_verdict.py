"""The daemon signs the job process's verdict, computed from the worker's held-out arrays, never the
verdict the contained worker returns (issue 19): a forged report is overruled, a repaired model the
arrays do not prove is not published, every digest is the parent's, and the metrics count every verdict."""

from __future__ import annotations

import base64
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from convrepair.daemon.verdict import judge_job
from convrepair.errors import BadInput
from convrepair.fsutil import sha256_file
from convrepair.judge import Tolerance
from convrepair.repair.evidence import write_evidence
from convrepair.repair.outcome import RepairConfig

CLASSES = Tolerance(1e-1, 1e-1, False, "default for int8")


def _evidence(folder: Path, flips_target: int, flips_repaired: int, n: int = 400) -> Path:
    """Real held-out outputs: 10-class scores where the first `flips_*` samples change their label."""
    rng = np.random.default_rng(0)
    source = rng.normal(size=(n, 10)).astype(np.float32)
    labels = source.argmax(axis=1)

    def flipped(count: int) -> np.ndarray:
        out = source.copy()
        rows = np.arange(count)
        out[rows, (labels[rows] + 1) % 10] = out[rows].max(axis=1) + 1.0
        return out

    write_evidence(folder, {"source": [source], "target": [flipped(flips_target)], "repaired": [flipped(flips_repaired)]},
                   np.arange(n), ["logits"], CLASSES.to_json(), True, [])
    return folder


def _stage(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A job's scratch as the worker leaves it, and the worker's (forged) report naming it."""
    scratch = tmp_path / "scratch"
    (scratch / "converted").mkdir(parents=True)
    (scratch / "repaired").mkdir()
    (scratch / "converted" / "model.onnx").write_bytes(b"converted bytes")
    (scratch / "repaired" / "model.onnx").write_bytes(b"repaired bytes")
    model = tmp_path / "model.pt2"
    model.write_bytes(b"source bytes")
    report = {"source": {"path": "/etc/passwd", "format": "pt2", "sha256": "0" * 64},
              "target": {"path": str(scratch / "converted" / "model.onnx"), "format": "onnx", "sha256": "1" * 64},
              "output": {"path": str(scratch / "repaired" / "model.onnx"), "sha256": "2" * 64, "files": {}},
              "verdict": "repaired", "verdict_reason": "trust me", "samples_needed": None,
              "held_out": {"n": 400, "failing_before": [0], "failing_after": []}, "check_before": {"label_agreement": 1.0}}
    return scratch, model, report


def test_a_forged_repaired_verdict_is_overruled_and_its_model_not_published(tmp_path):
    scratch, model, forged = _stage(tmp_path)
    evidence = _evidence(tmp_path / "evidence", flips_target=5, flips_repaired=2)
    report = judge_job(forged, evidence, RepairConfig(force=True), scratch, model)
    assert report["verdict"] == "not_repaired" and report["output"] is None
    assert not (scratch / "repaired").exists()  # what the worker left is never published
    assert report["held_out"]["failing_before"] == [0, 1, 2, 3, 4] and report["held_out"]["failing_after"] == [0, 1]
    provenance = report["provenance"]
    assert provenance["worker_verdict"]["verdict"] == "repaired" and provenance["agrees"] is False
    assert {"verdict", "held_out", "source.sha256", "target.sha256"} <= set(provenance["parent"])
    assert "check_before" in provenance["worker"]
    # the digests are the parent's, of the files it names, not the worker's figures
    assert report["source"]["path"] == str(model) and report["source"]["sha256"] == sha256_file(model)
    assert report["target"]["sha256"] == sha256_file(scratch / "converted" / "model.onnx")


def test_a_proven_repair_is_published_with_the_parents_digests_whatever_the_worker_said(tmp_path):
    scratch, model, report = _stage(tmp_path)
    report = report | {"verdict": "not_repaired", "verdict_reason": "modest worker"}
    evidence = _evidence(tmp_path / "evidence", flips_target=5, flips_repaired=0)
    judged = judge_job(report, evidence, RepairConfig(force=True), scratch, model)
    assert judged["verdict"] == "repaired" and judged["provenance"]["worker_verdict"]["verdict"] == "not_repaired"
    out = scratch / "repaired" / "model.onnx"
    assert judged["output"]["sha256"] == sha256_file(out) and judged["output"]["files"] == {"model.onnx": sha256_file(out)}


@pytest.mark.parametrize("role, path", [("target", "/etc/hostname"), ("output", "repaired/../converted/model.onnx"),
                                        ("output", "repaired"), ("target", None)])
def test_a_worker_naming_files_outside_its_stage_fails_the_job(tmp_path, role, path):
    scratch, model, report = _stage(tmp_path)
    evidence = _evidence(tmp_path / "evidence", flips_target=5, flips_repaired=0)
    report[role] = dict(report[role], path=str(scratch / path) if path and not path.startswith("/") else path)
    with pytest.raises(BadInput, match="outside its stage"):
        judge_job(report, evidence, RepairConfig(force=True), scratch, model)


def test_missing_evidence_fails_the_job_with_one_line(tmp_path):
    scratch, model, report = _stage(tmp_path)
    with pytest.raises(BadInput, match="held-out outputs"):
        judge_job(report, tmp_path / "nothing", RepairConfig(force=True), scratch, model)


def test_metrics_count_every_verdict_by_label():
    from convrepair.daemon.http import VERDICTS, Metrics
    from convrepair.daemon.queue import Job
    from convrepair.daemon.worker import WorkerResult
    from convrepair.repair.outcome import VERDICTS as ALL

    assert set(VERDICTS) == set(ALL)
    metrics = Metrics()
    job = Job(1, "digits", "1", "onnx", "0" * 64, "done", 1, 0.0, 0.0, None, None, None)
    for verdict in [*ALL, "not_repaired", "made-up"]:
        metrics.observe(job, "done", WorkerResult(True, {"verdict": verdict}, None, 1.0))
    metrics.observe(job, "failed", WorkerResult(False, None, "boom", 1.0, reason="bad-input"))
    text = metrics.render().decode()
    for verdict in ALL:
        count = 2 if verdict == "not_repaired" else 1
        assert f'convrepair_repair_verdicts_total{{model="digits",target="onnx",verdict="{verdict}"}} {count}.0' in text
    assert 'verdict="other"} 1.0' in text and 'verdict="made-up"' not in text


FORGE = '''
"""Test-only: code in the contained worker that forges the repair's verdict (an attacker's view)."""
import importlib.abc, importlib.util, sys

class Forge(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "convrepair.repair":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            real = module.run_repair

            def forged(*args, **kwargs):
                report = real(*args, **kwargs)
                report.verdict, report.verdict_reason = "repaired", "forged by the worker"
                return report
            module.run_repair = forged
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Forge())
'''


@pytest.mark.slow
def test_daemon_signs_the_parents_verdict_when_the_worker_forges_one(fixtures_dir, tmp_path, monkeypatch):
    """`daemon --once` on a directory registry, with worker code that rewrites its verdict: the
    signed log carries the parent's verdict and says what the worker claimed."""
    forge = tmp_path / "forge"
    forge.mkdir()
    (forge / "sitecustomize.py").write_text(textwrap.dedent(FORGE))
    monkeypatch.setenv("PYTHONPATH", str(forge))  # the worker's environment keeps PYTHONPATH
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the job process keeps the evidence
    keys = tmp_path / "keys"
    assert run_cli("keys", "init", "--name", "service", "--dir", keys, "--trust", keys / "trust.json", "--role", "service").code == 0
    model_dir = tmp_path / "registry" / "digits"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "convrepair.toml").write_text('targets = ["onnx"]\ndata = "data.npz"\nlenses = "none"\n[repair]\npolicy = "restore"\n')
    shutil.copy(fixtures_dir / "digits_test_nchw.npz", model_dir / "data.npz")
    shutil.copy(fixtures_dir / "torch_cnn.pt2", model_dir / "1" / "model.pt2")
    result = run_cli("daemon", tmp_path / "registry", "--state-dir", tmp_path / "state", "--once", "--quiet-seconds", "0",
                     "--no-http", "--sign-key", keys / "service.key", timeout=600)
    assert result.code == 0, result.stdout + result.stderr
    results = model_dir / "1" / "convrepair" / "onnx"
    envelope = json.loads((results / "repair.log.dsse.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    predicate = statement["predicate"]
    assert predicate["verdict"] == predicate["repair"]["verdict"] == "already_equivalent", predicate["repair"]["verdict_reason"]
    provenance = predicate["repair"]["provenance"]
    assert provenance["worker_verdict"]["verdict"] == "repaired"  # the forge ran in the worker
    assert provenance["agrees"] is False and "verdict" in provenance["parent"] and "target.sha256" in provenance["parent"]
    assert predicate["repair"]["held_out"]["failing_before"] == []
    assert run_cli("verify", results / "repair.log.dsse.json", "--trust", keys / "trust.json").code == 0
    assert (tmp_path / "tmp").is_dir() and not list((tmp_path / "tmp").glob("convrepair-evidence-*"))  # removed after judging
