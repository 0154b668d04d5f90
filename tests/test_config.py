"""convrepair.toml: unknown or misplaced keys at any depth are errors naming the file, the key
path and the problem; `convrepair config validate` exits 0 / 2; the README's examples parse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from convrepair.daemon.config import ConfigError, load_model_config, parse_config
from convrepair.errors import BadInput

TARGETS = ["onnx", "onnx-int8", "torch", "tflite"]


def _write(directory: Path, text: str, name: str = "convrepair.toml") -> Path:
    (directory / "data.npz").write_bytes(b"")
    path = directory / name
    path.write_text(text)
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_model_config(path, TARGETS)
    return caught.value.problems


def test_a_full_config_loads_with_paths_resolved(tmp_path):
    path = _write(tmp_path, 'targets = ["onnx", "onnx-int8"]\ndata = "data.npz"\nlenses = ["calibration"]\nregression = true\n'
                            "[tolerances]\natol = 1e-4\nrtol = 0\n[repair]\npolicy = \"pso\"\nbudget_seconds = 30\n"
                            "accept_improvement = true\nprefer = \"exact\"\n")
    config = load_model_config(path, TARGETS)
    assert config.targets == ["onnx", "onnx-int8"] and config.data == (tmp_path / "data.npz").resolve()
    assert (config.atol, config.rtol, config.policy, config.budget_seconds, config.prefer) == (1e-4, 0.0, "pso", 30.0, "exact")
    assert config.regression and config.accept_improvement and config.lenses == ("calibration",)


def test_defaults(tmp_path):
    config = load_model_config(_write(tmp_path, 'targets = ["onnx"]\n'), TARGETS)
    assert (config.policy, config.budget_seconds, config.prefer, config.atol) == ("auto", 60.0, "auto", None)
    assert config.lenses == ("calibration", "uncertainty", "robustness", "occlusion")


@pytest.mark.parametrize("text, expected", [
    ('targets = ["onnx"]\n[repair]\nbudget_secnds = 60\n', "repair.budget_secnds: unknown key"),
    ('targets = ["onnx"]\n[tolerances]\nlenses = "all"\n', "tolerances.lenses: unknown key (known: atol, rtol); `lenses` belongs at the top level"),
    ('targets = ["onnx"]\npolicy = "pso"\n', "policy: unknown key"),
    ('targets = ["onnx"]\n[repair]\npolicy = "magic"\n', "repair.policy: 'magic' is not one of"),
    ('targets = ["onnx"]\n[repair]\naccept_improvement = "yes"\n', "repair.accept_improvement: must be true or false"),
    ('targets = ["onnx"]\n[tolerances]\natol = -1\n', "tolerances.atol: must be a non-negative number"),
    ('targets = ["onnx"]\n[tolerances]\natol = "1e-3"\n', "tolerances.atol: must be a non-negative number"),
    ('targets = ["onnx"]\n[tolerances.extra]\nx = 1\n', "tolerances.extra: unknown key"),
    ('targets = []\n', "targets: must not be empty"),
    ('data = "data.npz"\n', "targets: required key is missing"),
    ('targets = ["onnx", "vibes"]\n', "targets: unknown target 'vibes'"),
    ('targets = ["onnx"]\ndata = "missing.npz"\n', "data: missing.npz does not exist"),
    ('targets = ["onnx"]\nlenses = "vibes"\n', "lenses: unknown lens"),
    ('targets = ["onnx"]\nlenses = 3\n', 'lenses: must be "all", "none" or a list of lens names'),
    ('targets = ["onnx"]\ntolerances = 3\n', "tolerances:"),
])
def test_each_mistake_is_named_by_its_key_path(tmp_path, text, expected):
    problems = _problems(_write(tmp_path, text))
    assert any(problem.startswith(expected) for problem in problems), problems


def test_every_problem_is_reported_at_once_one_line_each(tmp_path):
    path = _write(tmp_path, 'targets = ["vibes"]\n[tolerances]\nlenses = "all"\n[repair]\nbudget_secnds = 1\npolicy = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_model_config(path, TARGETS)
    lines = caught.value.lines()
    assert len(lines) == 4 and all(line.startswith(f"{path}: ") and "\n" not in line for line in lines)
    assert isinstance(caught.value, BadInput) and caught.value.exit_code == 2  # the daemon and the CLI treat it as bad input
    assert str(path) in caught.value.one_line()  # the daemon's failed job names the file


def test_not_toml_is_bad_input_naming_the_file(tmp_path):
    path = _write(tmp_path, "targets = [\n")
    with pytest.raises(BadInput, match="is not valid TOML"):
        load_model_config(path, TARGETS)


def test_config_validate_exit_codes(tmp_path):
    good = _write(tmp_path, 'targets = ["onnx"]\ndata = "data.npz"\n', "good.toml")
    bad = _write(tmp_path, 'targets = ["onnx"]\n[repair]\nbudget_secnds = 60\n', "bad.toml")
    ok = run_cli("config", "validate", good)
    assert ok.code == 0 and "valid" in ok.stdout, ok.stderr
    failed = run_cli("config", "validate", bad, "--json", tmp_path / "v.json")
    assert failed.code == 2
    assert failed.stderr.strip().splitlines() == [f"convrepair: error: {bad}: repair.budget_secnds: unknown key "
                                                  "(known: policy, budget_seconds, accept_improvement, prefer, max_flip_rate)"]
    assert '"valid": false' in (tmp_path / "v.json").read_text()
    missing = run_cli("config", "validate", tmp_path / "nope.toml")
    assert missing.code == 2 and "nope.toml" in missing.stderr


def readme_toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_every_toml_example_in_the_readme_is_a_valid_config(tmp_path):
    from convrepair.plugins import default_registry

    blocks = readme_toml_blocks()
    assert blocks, "the README shows a convrepair.toml"
    known = default_registry().targets()
    for index, block in enumerate(blocks):
        path = tmp_path / f"readme-{index}.toml"
        path.write_text(block)
        config = parse_config(path)  # the files it names are the reader's, not ours: shape and values only
        assert set(config.targets) <= set(known), config.targets
