"""What a job's models may read is the parent's choice: every file a model's convrepair.toml names
resolves inside the model's folder (or an --allow-read folder), and the service key and the
daemon's state are never readable, whatever the config says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import run_cli

GOOD = 'targets = ["onnx"]\nlenses = "none"\n[repair]\npolicy = "none"\n'


def _model(registry: Path, name: str, fixtures: Path, config: str) -> Path:
    model = registry / name
    (model / "1").mkdir(parents=True)
    (model / "convrepair.toml").write_text(config)
    shutil.copy(fixtures / "torch_cnn.pt2", model / "1" / "model.pt2")
    return model


def test_config_validate_refuses_every_path_that_leaves_the_model_folder(fixtures_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "service.key").write_text("secret")
    model = tmp_path / "registry" / "digits"
    model.mkdir(parents=True)
    (model / "link.npz").symlink_to(keys / "service.key")
    shutil.copy(fixtures_dir / "digits_test_nchw.npz", model / "data.npz")
    for value in ("../../keys/service.key", str(keys / "service.key"), "link.npz"):
        (model / "convrepair.toml").write_text(f'targets = ["onnx"]\ndata = "{value}"\n')
        result = run_cli("config", "validate", model / "convrepair.toml")
        assert result.code == 2, (value, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "data:" in lines[0] and "outside the model's folder" in lines[0], lines
        assert str(model / "convrepair.toml") in lines[0]
    (model / "convrepair.toml").write_text(f'targets = ["onnx"]\ndata = "{keys / "service.key"}"\n')
    granted = run_cli("config", "validate", model / "convrepair.toml", "--allow-read", keys)  # the operator's choice
    assert granted.code == 0, granted.stderr
    (model / "convrepair.toml").write_text('targets = ["onnx"]\ndata = "data.npz"\n')
    assert run_cli("config", "validate", model / "convrepair.toml").code == 0


def test_trust_model_code_is_a_per_model_setting_off_by_default(tmp_path):
    config = tmp_path / "convrepair.toml"
    config.write_text('targets = ["onnx"]\n')
    result = run_cli("config", "validate", config, "--json", "-")
    assert result.code == 0 and json.loads(result.stdout)["config"]["trust_model_code"] is False
    config.write_text('targets = ["onnx"]\ntrust_model_code = true\n')
    assert json.loads(run_cli("config", "validate", config, "--json", "-").stdout)["config"]["trust_model_code"] is True
    config.write_text('targets = ["onnx"]\ntrust_model_code = "yes"\n')
    refused = run_cli("config", "validate", config)
    assert refused.code == 2 and "trust_model_code: must be true or false" in refused.stderr


def test_the_daemon_never_lets_a_job_read_the_key_or_its_state_whatever_the_config_says(fixtures_dir, tmp_path):
    registry = tmp_path / "registry"
    outside = tmp_path / "keys"
    outside.mkdir()
    (outside / "other.key").write_text("secret")
    _model(registry, "escape", fixtures_dir, 'targets = ["onnx"]\ndata = "../../keys/other.key"\n')
    keyed = _model(registry, "keyed", fixtures_dir, 'targets = ["onnx"]\ndata = "service.key"\n')
    assert run_cli("keys", "init", "--name", "service", "--dir", keyed, "--trust", tmp_path / "trust.json", "--role", "service").code == 0
    stateful = _model(registry, "stateful", fixtures_dir, 'targets = ["onnx"]\ndata = "state/queue.sqlite"\n')
    state = stateful / "state"  # an operator's mistake: the state dir inside a model's folder
    result = run_cli("daemon", registry, "--state-dir", state, "--once", "--quiet-seconds", "0", "--no-http",
                     "--sign-key", keyed / "service.key", timeout=300)
    assert result.code == 0, result.stderr[-3000:]
    jobs = {j["model"]: j for j in json.loads(run_cli("status", "--state-dir", state, "--json", "-").stdout)}
    assert {j["state"] for j in jobs.values()} == {"failed"}, jobs
    assert all("\n" not in j["error"] for j in jobs.values())
    assert "outside the model's folder" in jobs["escape"]["error"] and "other.key" in jobs["escape"]["error"]
    assert "service.key" in jobs["keyed"]["error"] and "may never read" in jobs["keyed"]["error"], jobs["keyed"]
    assert "queue.sqlite" in jobs["stateful"]["error"] and "may never read" in jobs["stateful"]["error"], jobs["stateful"]
    assert all(j["attempts"] <= 1 for j in jobs.values())  # refused, not retried


def test_a_model_or_companion_that_links_out_of_its_folder_is_refused(tmp_path):
    import pytest

    from convrepair.daemon.reads import check_reads, companions
    from convrepair.errors import BadInput

    secret = tmp_path / "keys" / "service.key"
    secret.parent.mkdir()
    secret.write_text("secret")
    version = tmp_path / "registry" / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"model")
    assert check_reads(companions(version / "model.onnx"), version.parent) == [version / "model.onnx"]
    (version / "model.onnx.data").symlink_to(secret)  # external data that is the key
    with pytest.raises(BadInput, match="outside the model's folder"):
        check_reads(companions(version / "model.onnx"), version.parent)
    with pytest.raises(BadInput, match="may never read"):  # granted by the operator, still never the key
        check_reads(companions(version / "model.onnx"), version.parent, [secret.parent], never=[secret])
