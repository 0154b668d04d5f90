"""One CLI grammar: `--json PATH|-` everywhere, --version, -q, no fake defaults, no silent overwrite."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

# every command that produces a result a pipeline may want to read
JSON_COMMANDS = [["convert"], ["check"], ["repair"], ["keys", "init"], ["approve"], ["reject"], ["verify"],
                 ["review"], ["show"], ["status"], ["plugins"], ["daemon"], ["config", "validate"]]


@pytest.mark.parametrize("command", JSON_COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_takes_json_path_or_stdout(command):
    result = run_cli(*command, "--help")
    assert result.code == 0, result.stderr
    assert "--json" in result.stdout and "PATH" in result.stdout
    assert "<bool>" not in result.stdout  # flags show no placeholder


def test_version():
    result = run_cli("--version")
    assert result.code == 0 and result.stdout.startswith("convrepair ")


def test_repair_out_is_required_and_shows_no_fake_default():
    help_text = run_cli("repair", "--help").stdout
    assert "[default: .]" not in help_text
    result = run_cli("repair", "a.onnx", "b.onnx")
    assert result.code == 2 and "--out" in result.stderr


def test_check_json_stdout_is_only_json(fixtures_dir):
    model = fixtures_dir / "torch_cnn.pt2"
    result = run_cli("check", model, model, "--data", fixtures_dir / "digits_test_nchw.npz",
                     "--rounds", "1", "--samples", "20", "--json", "-")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)  # nothing but the document on stdout
    assert report["schema"] == "convrepair.check/v1" and report["verdict"] == "equivalent"
    out = report["outputs"][0]  # Polygraphy-style statistics: percentiles and the minimum passing tolerance
    assert out["min_passing_tolerance"] == {"atol": out["max_abs"], "rtol": out["max_rel"]}
    assert set(out["rel_error_percentiles"]) == {"mean", "median", "p90", "p99"}


def test_plugins_bare_json_flag_still_means_stdout():
    rows = json.loads(run_cli("plugins", "--quick", "--json").stdout)
    assert any(row["plugin"] == "onnx" for row in rows)


def test_quiet_prints_nothing_but_errors(tmp_path):
    result = run_cli("-q", "keys", "init", "--name", "k", "--dir", tmp_path)
    assert result.code == 0 and result.stdout == ""
    assert (tmp_path / "k.key").exists()


def test_convert_refuses_to_overwrite_without_force(tmp_path, fixtures_dir):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"precious")
    refused = run_cli("convert", fixtures_dir / "torch_cnn.pt2", "--to", "onnx", "--out", out)
    assert refused.code == 2 and "model.onnx" in refused.stderr and "--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"precious"
    forced = run_cli("convert", fixtures_dir / "torch_cnn.pt2", "--to", "onnx", "--out", out, "--force")
    assert forced.code == 0, forced.stderr
    assert out.read_bytes()[:8] != b"precious"


def test_daemon_once_json_lists_the_jobs_and_needs_once(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    result = run_cli("daemon", registry, "--state-dir", tmp_path / "state", "--once", "--no-http", "--json", "-")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == []  # an empty registry: no jobs, and nothing else on stdout
    refused = run_cli("daemon", registry, "--state-dir", tmp_path / "state2", "--no-http", "--json", "-")
    assert refused.code == 2 and "--once" in refused.stderr


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_global_flags_are_accepted_after_the_subcommand(tmp_path, flag):
    # the README says every command takes -q/-v; `check … -q` was "No such option"
    result = run_cli("keys", "init", "--name", "k", "--dir", tmp_path, flag)
    assert result.code == 0 and result.stdout == "", result.stderr
    assert (tmp_path / "k.key").exists()


def test_hoisting_moves_only_root_flags_and_nothing_after_a_double_dash():
    from convrepair.cli.common import hoist_global_flags

    assert hoist_global_flags(["check", "a", "b", "-vv", "--json", "-", "-q"]) == ["-vv", "-q", "check", "a", "b", "--json", "-"]
    assert hoist_global_flags(["convert", "-O", "k=v", "--", "-q"]) == ["convert", "-O", "k=v", "--", "-q"]


def test_debug_never_changes_the_exit_status(tmp_path):
    missing = tmp_path / "missing.onnx"
    plain = run_cli("check", missing, missing)
    debug = run_cli("check", missing, missing, "--debug")
    assert plain.code == debug.code == 2
    assert "Traceback" in debug.stderr and "Traceback" not in plain.stderr
