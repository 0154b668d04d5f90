"""Shared test fixtures: the built fixture models and a helper that runs the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))  # fixtures/faults.py: fault injection shared with the demo


@pytest.fixture(scope="session")
def _session_ir_cache(tmp_path_factory) -> Path:
    """One folder for the run: under xdist its workers' base folders share a parent (the cache's
    writes are atomic renames, safe across processes)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "ir-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(autouse=True)
def _own_ir_cache(_session_ir_cache, monkeypatch):
    """The session's IR cache (convrepair.ircache), never the user's ~/.cache. Shared by the tests, as
    it is shared by a user's jobs: an entry is keyed by the source's sha256, the export options and
    the converter versions, and a hit is held to its fidelity again (tests/test_ir_cache.py). A test
    that counts exports or damages entries sets its own."""
    monkeypatch.setenv("CONVREPAIR_IR_CACHE", str(_session_ir_cache))


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory) -> Path:
    """Built fixtures: `make test` builds them once and passes CONVREPAIR_FIXTURES; else build here."""
    given = os.environ.get("CONVREPAIR_FIXTURES")
    if given and (Path(given) / "keras_cnn.keras").exists():
        return Path(given)
    out = tmp_path_factory.mktemp("fixtures")
    subprocess.run([sys.executable, str(ROOT / "fixtures" / "build.py"), "--out", str(out)], check=True)
    return out


@pytest.fixture
def work(tmp_path, fixtures_dir) -> Path:
    """A scratch copy of the fixtures, so a test may write beside them."""
    for item in fixtures_dir.iterdir():
        if item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, tmp_path / item.name)
        else:
            shutil.copy2(item, tmp_path / item.name)
    return tmp_path


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> CliResult:
    """Run the installed CLI as a user would: a real subprocess."""
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "convrepair", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def log_events(log: Path) -> list[dict]:
    """The JSON events of a daemon's `--log-format json` log (other lines, e.g. a library's, skipped)."""
    import json

    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def contained() -> None:
    """The red-team suite (tests/security/) attacks the trust boundary; without containment on
    this machine it cannot, and under CI=true that fails instead of skipping. (Kept here, not in
    a tests/security/conftest.py: a second module named `conftest` would shadow this one for
    every `from conftest import …` in the same process.)"""
    from convrepair.contain import probe

    containment = probe()
    if containment.in_force:
        return
    message = f"no containment on this machine: {containment.reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: the red-team tests must run)")
    pytest.skip(message)


# The longest files first (measured: `make test PYTEST_ARGS="... --durations=40"`). xdist's loadfile
# hands out whole files in collection order; collected alphabetically, test_zoo.py would start last
# and run on one worker while the other idles. Started first, the short files fill in beside it.
LONGEST_FIRST = ("test_zoo.py", "test_mlflow_review.py", "test_daemon_outage.py", "test_mlflow.py", "test_ray_executor.py",
                 "test_readme.py", "test_daemon.py", "test_check.py", "test_repair.py", "test_daemon_holds.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(name))
        return (1, 0) if item.get_closest_marker("slow") else (2, 0)

    items[:] = [item for _, item in sorted(enumerate(items), key=lambda pair: (rank(pair[1]), pair[0]))]
