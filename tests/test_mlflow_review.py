"""MLflow as a first-class review target (issue 22), against a real MLflow server: show, approve,
reject, review and verify take models:/NAME/VERSION[/TARGET] and models:/NAME@ALIAS; a version
processed for two targets is never decided by a silent pick; decisions are tagged per target;
`review --registry models:/NAME` lists (and pages) every log of the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("mlflow")

from conftest import run_cli  # noqa: E402
from mlflow_server import ENV, client, mlflow_server, register_model, register_version  # noqa: E402

pytestmark = pytest.mark.slow
CONFIG = 'targets = ["onnx", "onnx-int8"]\ndata = "data.npz"\nlenses = "none"\n[repair]\npolicy = "none"\n'


def _cli(uri: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convrepair", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def pair(fixtures_dir, tmp_path_factory):
    """A real server; one version of `pair` processed by the daemon for two targets, signed."""
    root = tmp_path_factory.mktemp("mlflow-review")
    for name, role in (("service", "service"), ("alice", "reviewer")):
        made = run_cli("keys", "init", "--name", name, "--dir", root / "keys", "--trust", root / "trust.json", "--role", role)
        assert made.code == 0, made.stderr
    with mlflow_server(root / "server") as uri:
        mlflow = client(uri)
        register_model(mlflow, "pair", CONFIG)
        register_version(mlflow, "pair", {"model.pt2": fixtures_dir / "torch_cnn.pt2",
                                           "data.npz": fixtures_dir / "digits_test_nchw.npz"}, root)
        daemon = _cli(uri, "daemon", f"{uri}?poll_seconds=1", "--registry-kind", "mlflow", "--state-dir", root / "state",
                      "--once", "--no-http", "--sign-key", root / "keys" / "service.key", timeout=900)
        assert daemon.returncode == 0, daemon.stdout[-3000:] + daemon.stderr[-3000:]
        yield uri, mlflow, root


def test_a_version_with_two_targets_is_never_decided_by_a_silent_pick(pair):
    uri, mlflow, root = pair
    trust, key = root / "trust.json", root / "keys" / "alice.key"
    tags = mlflow.get_model_version("pair", "1").tags
    assert {"convrepair.onnx.verdict", "convrepair.onnx-int8.verdict"} <= set(tags)
    ambiguous = _cli(uri, "approve", "models:/pair/1", "--key", key, "--trust", trust)
    assert ambiguous.returncode == 2 and len(ambiguous.stderr.strip().splitlines()) == 1, ambiguous.stderr
    assert "has 2 targets (onnx, onnx-int8); name one: models:/pair/1/onnx or --target onnx" in ambiguous.stderr

    approved = _cli(uri, "approve", "models:/pair/1/onnx", "--key", key, "--comment", "fp32 ok", "--trust", trust, "--json", "-")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["target"] == "onnx"
    rejected = _cli(uri, "reject", "models:/pair/1", "--target", "onnx-int8", "--key", key, "--reason", "int8 flips",
                    "--trust", trust)
    assert rejected.returncode == 0, rejected.stderr
    tags = mlflow.get_model_version("pair", "1").tags
    assert tags["convrepair.onnx.decision"] == "approved" and tags["convrepair.onnx-int8.decision"] == "rejected"
    assert tags["convrepair.onnx.decision_text"] == "fp32 ok" and tags["convrepair.onnx-int8.decision_text"] == "int8 flips"
    assert tags["convrepair.onnx.decision_entry"] != tags["convrepair.onnx-int8.decision_entry"]
    assert "convrepair.decision_entry" not in tags and "convrepair.decision_text" not in tags  # nothing unnamespaced mixes them

    assert _cli(uri, "verify", "models:/pair/1/onnx", "--trust", trust, "--require-approval").returncode == 0
    int8 = _cli(uri, "verify", "models:/pair/1", "--target", "onnx-int8", "--trust", trust, "--require-approval", "--json", "-")
    assert int8.returncode == 1 and json.loads(int8.stdout)["status"] == "rejected"
    clash = _cli(uri, "verify", "models:/pair/1/onnx", "--target", "onnx-int8", "--trust", trust)
    assert clash.returncode == 2 and "names target onnx, --target says onnx-int8" in clash.stderr

    mlflow.set_registered_model_alias("pair", "candidate", "1")
    shown = _cli(uri, "show", "models:/pair@candidate/onnx", "--trust", trust, "--json", "-")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["predicateType"] == "https://convrepair.dev/repair-log/v1"
    assert _cli(uri, "show", "models:/pair@candidate", "--trust", trust).returncode == 2  # two targets: named, not picked


def test_review_lists_and_pages_every_log_of_an_mlflow_model(pair):
    uri, _, root = pair
    index = root / "site" / "index.html"
    listed = _cli(uri, "review", "--registry", "models:/pair", "--trust", root / "trust.json", "--html", index, "--json", "-")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(row["log"] for row in rows) == ["models:/pair/1/onnx", "models:/pair/1/onnx-int8"]
    assert all(row["status"] in ("pending", "approved", "rejected") and row["model"] == "pair" for row in rows)
    pages = sorted((root / "site" / "index-pages").iterdir())
    assert len(pages) == 2 and all("models:/pair/1/" in index.read_text() for _ in pages)
