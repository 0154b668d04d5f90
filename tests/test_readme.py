"""The README is executable: the shell blocks a newcomer copies (the five-minute guide, the review
path) run verbatim, in order, in a temp dir holding fixtures under the names the README uses.

A block is runnable when `<!-- readme-test: NAME -->` stands right before its ```sh fence; setup
lines (`git clone`, `pip install`) live in an unmarked block. Each line must exit 0, or the status
the README states on it with a trailing `# exit N`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import faults as fi

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests: .venv/bin under `make test`

pytestmark = pytest.mark.slow

_BLOCK = re.compile(r"<!-- readme-test: ([\w-]+) -->\s*\n```(\w+)\n(.*?)```", re.S)
_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")


def marked_blocks(doc: Path, name: str, lang: str) -> list[str]:
    """The bodies of every LANG block marked NAME in DOC, in order."""
    return [body for label, fence, body in _BLOCK.findall(doc.read_text()) if label == name and fence == lang]


def readme_blocks(name: str) -> list[str]:
    """The command lines of every sh block marked NAME, in README order (whole-line comments dropped)."""
    lines = [line for body in marked_blocks(ROOT / "README.md", name, "sh") for line in body.splitlines()]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _run_verbatim(lines: list[str], cwd: Path) -> dict[str, str]:
    """Run each line in order; the stdout of each, by line."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", COLUMNS="200")
    printed = {}
    for line in lines:
        expected = int(m.group(1)) if (m := _EXIT.search(line)) else 0
        proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == expected, f"README line exited {proc.returncode}, not {expected}:\n{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        printed[line] = proc.stdout
    return printed


def _assert_next_hints(printed: dict[str, str]) -> None:
    """convert, check, repair and approve each end with one `next:` line naming a real command."""
    for line, stdout in printed.items():
        words = line.split()
        if words[:1] != ["convrepair"] or words[1] not in {"convert", "check", "repair", "approve"}:
            continue
        hints = [out for out in stdout.splitlines() if out.startswith("next: ")]
        assert len(hints) == 1, f"{line}\nprinted {len(hints)} next: lines:\n{stdout[-2000:]}"
        assert hints[0].split()[1] in {"convrepair", "deploy", "repeat"}, hints[0]


def _workspace(tmp_path: Path, fixtures_dir: Path) -> Path:
    """my_model.keras (the Keras CNN) and my_data.npz (real digits in its NHWC layout)."""
    shutil.copy(fixtures_dir / "keras_cnn.keras", tmp_path / "my_model.keras")
    shutil.copy(fixtures_dir / "digits_all_nhwc.npz", tmp_path / "my_data.npz")
    return tmp_path


def test_the_marked_blocks_exist_and_name_only_installed_commands():
    for name in ("guide", "review"):
        lines = readme_blocks(name)
        assert lines, f"the README marks a `{name}` block"
        for line in lines:
            assert line.split()[0] in {"convrepair", "model_signing"}, line
    assert (BIN / "convrepair").exists() and (BIN / "model_signing").exists()


def test_five_minute_guide_runs_verbatim(tmp_path, fixtures_dir):
    work = _workspace(tmp_path, fixtures_dir)
    _assert_next_hints(_run_verbatim(readme_blocks("guide"), work))
    # what the guide says the reader ends with
    assert (work / "page.html").stat().st_size > 0
    assert (work / "approved" / "my_model" / "1" / "convrepair" / "model.sig").exists()


def test_review_section_runs_verbatim(tmp_path, fixtures_dir):
    """The review path on a broken conversion (conv2's pads made asymmetric), as the section says."""
    from convrepair.convert import convert
    from convrepair.plugins import default_registry
    from convrepair.sidecar import read_sidecar, write_sidecar

    work = _workspace(tmp_path, fixtures_dir)
    clean = convert(default_registry(), work / "my_model.keras", "onnx", out_dir=tmp_path / "converted").output.path
    broken = fi.inject(clean, work / "broken.onnx", fi.asymmetric_pads, "conv2")
    write_sidecar(broken, read_sidecar(clean))
    _run_verbatim(readme_blocks("review"), work)
    assert (work / "index.html").stat().st_size > 0
    assert (work / "repo" / "my_model" / "1" / "convrepair" / "model.sig").exists()


def test_mlflow_registration_snippet_runs_verbatim_and_the_daemon_takes_the_version(tmp_path, fixtures_dir):
    """docs/DAEMON.md's producer snippet against a real `mlflow server`; `daemon --once` then
    processes the version it registered."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            raise  # CI must prove the snippet, not skip it
        pytest.skip("mlflow is not installed (pip install 'convrepair[mlflow]')")
    import json

    from mlflow_server import ENV, client, mlflow_server

    (snippet,) = marked_blocks(ROOT / "docs" / "DAEMON.md", "mlflow-register", "python")
    work = tmp_path / "producer"
    work.mkdir()
    shutil.copy(fixtures_dir / "keras_cnn.keras", work / "model.keras")
    shutil.copy(fixtures_dir / "digits_all_nhwc.npz", work / "data.npz")
    with mlflow_server(tmp_path / "mlflow") as uri:
        env = {**os.environ, **ENV, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200",
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        ran = subprocess.run([sys.executable, "-c", snippet], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr[-3000:]
        keys = tmp_path / "keys"
        made = subprocess.run(["convrepair", "keys", "init", "--name", "service", "--dir", str(keys), "--trust",
                               str(keys / "trust.json"), "--role", "service"], env=env, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        state = tmp_path / "state"
        daemon = subprocess.run(["convrepair", "daemon", f"{uri}?poll_seconds=1", "--registry-kind", "mlflow", "--once",
                                 "--no-http", "--state-dir", str(state), "--sign-key", str(keys / "service.key")],
                                env=env, capture_output=True, text=True, timeout=600)
        assert daemon.returncode == 0, daemon.stdout[-3000:] + daemon.stderr[-3000:]
        status = subprocess.run(["convrepair", "status", "--state-dir", str(state), "--json", "-"], env=env,
                                capture_output=True, text=True)
        jobs = {(j["model"], j["version"]): j["state"] for j in json.loads(status.stdout)}
        assert jobs == {("digits", "1"): "done"}, jobs
        assert client(uri).get_model_version("digits", "1").tags["convrepair.status"] == "pending-review"
