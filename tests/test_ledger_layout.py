"""One layout, one discovery rule (issue 22): trust.json found the same way by show, approve,
reject, review and verify, from the log or from the current directory; decisions land beside the
trust file; promotion named after the source model, resumable after a kill; every "not found"
says how to fix it."""

from __future__ import annotations

import json
import shutil

from conftest import run_cli
from ledger_helpers import make_keys, make_log


def _key(root, who="alice"):
    return root / "keys" / f"{who}.key"


def test_a_log_outside_the_project_finds_the_trust_file_of_the_current_directory(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    make_keys(project)
    shutil.copytree(project / "keys", elsewhere / "keys")  # make_log signs with ROOT/keys/service.key
    log = make_log(elsewhere, "job")
    shown = run_cli("show", log, "--json", "-", cwd=project)
    assert shown.code == 0, shown.stderr
    approved = run_cli("approve", log, "--key", _key(project), "--comment", "ok", cwd=project)
    assert approved.code == 0, approved.stderr
    assert (project / "transparency" / "checkpoint").is_file()  # beside trust.json, not beside the log
    assert not (elsewhere / "job" / "transparency").exists()
    verified = run_cli("verify", log, "--trust", "trust.json", "--require-approval", cwd=project)
    assert verified.code == 0, verified.stdout + verified.stderr


def test_decisions_land_beside_an_explicit_trust_file(tmp_path):
    make_keys(tmp_path)
    log = make_log(tmp_path)
    moved = tmp_path / "registry" / "trust.json"
    moved.parent.mkdir()
    (tmp_path / "trust.json").rename(moved)
    approved = run_cli("approve", log, "--key", _key(tmp_path), "--comment", "ok", "--trust", moved, cwd=tmp_path / "registry")
    assert approved.code == 0, approved.stderr
    assert (tmp_path / "registry" / "transparency" / "checkpoint").is_file() and not (tmp_path / "job" / "transparency").exists()
    verified = run_cli("verify", log, "--trust", moved, "--require-approval")
    assert verified.code == 0, verified.stdout
    listed = run_cli("review", "--registry", tmp_path / "job", "--trust", moved, "--json", "-")
    assert [row["status"] for row in json.loads(listed.stdout)] == ["approved"]


def test_no_trust_file_says_how_to_make_one(tmp_path):
    make_keys(tmp_path)
    log = make_log(tmp_path)
    (tmp_path / "trust.json").unlink()
    for args in (("show", log), ("approve", log, "--key", _key(tmp_path)), ("review", "--registry", tmp_path)):
        result = run_cli(*args, cwd=tmp_path)
        assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "convrepair keys init --name reviewer --dir keys --trust trust.json --role reviewer" in result.stderr
        assert "--trust FILE" in result.stderr


def test_promotion_is_named_after_the_source_prints_what_to_verify_and_cleans_up_a_killed_run(tmp_path):
    make_keys(tmp_path)
    log = make_log(tmp_path)
    killed = tmp_path / "repo" / "source" / ".1.x1y2z3.tmp"  # what a kill -9 during promotion leaves
    (killed / "1").mkdir(parents=True)
    (killed / "1" / "model.onnx").write_bytes(b"half")
    approved = run_cli("approve", log, "--key", _key(tmp_path), "--comment", "ok", "--promote", tmp_path / "repo", cwd=tmp_path)
    assert approved.code == 0, approved.stderr
    version = tmp_path / "repo" / "source" / "1"
    assert not killed.exists() and (version / "model.onnx").is_file()
    assert f"log:  {version / 'convrepair' / log.name}" in approved.stdout
    command = next(line for line in approved.stdout.splitlines() if line.startswith("next: "))[len("next: "):]
    assert command == f"convrepair verify {version} --trust trust.json --require-approval"  # relative to where it ran
    verified = run_cli(*command.split()[1:], cwd=tmp_path)
    assert verified.code == 0 and "verified" in verified.stdout, verified.stdout + verified.stderr
    as_json = json.loads(run_cli("verify", version, "--trust", tmp_path / "trust.json", "--json", "-").stdout)
    assert as_json["log"] == str(version / "convrepair" / log.name) and as_json["status"] == "approved"
    folder = run_cli("verify", tmp_path / "repo", "--trust", tmp_path / "trust.json")
    assert folder.code == 2 and "promoted version folder (REPO/MODEL/VERSION)" in folder.stderr
