"""Progress of long stages: the engine reports through report/progress.py; the CLI shows it on a
terminal's stderr and nowhere else (a pipe, `--json -`)."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import threading

import pytest
from rich.console import Console
from rich.table import Table

from convrepair.report import progress
from convrepair.report.fit import fit


def test_nothing_listens_by_default():
    assert progress.current() is progress.NULL
    assert list(progress.track([1, 2, 3], "anything")) == [1, 2, 3]


def test_track_and_stage_report_to_the_progress_in_use():
    recording = progress.RecordingProgress()
    with progress.using(recording):
        for _ in progress.track(range(4), "rounds"):
            with progress.stage("inner", 2) as step:
                step.advance(2)
    assert progress.current() is progress.NULL  # restored
    assert recording.stages[0] == {"stage": "rounds", "total": 4, "advanced": 4}
    assert [s["stage"] for s in recording.stages[1:]] == ["inner"] * 4


def test_a_contained_workers_reports_reach_the_parent_and_garbage_is_ignored():
    recording = progress.RecordingProgress()
    others = []
    on_message = progress.relay(recording, others.append)
    with progress.using(progress.ForwardingProgress(on_message)):
        for _ in progress.track(["a", "b"], "converting"):
            pass
    for junk in ({"progress": "x"}, {"progress": ["stage", "id", 3, None]}, {"progress": ["advance", 99, 1]},
                 {"progress": ["stage", 7, "n" * 1000, "many"]}, {"progress": [None]}, [1, 2]):
        on_message(junk)
    assert recording.stages == [{"stage": "converting", "total": 2, "advanced": 2}]
    assert others == [[1, 2]]  # not progress: handed on


def test_check_reports_loading_and_rounds(fixtures_dir):
    from convrepair.check import CheckConfig, run_check
    from convrepair.plugins import default_registry

    recording = progress.RecordingProgress()
    model = fixtures_dir / "torch_cnn.pt2"
    with progress.using(recording):
        run_check(default_registry(), model, model, CheckConfig(data=fixtures_dir / "digits_test_nchw.npz", rounds=3, samples=20))
    names = [s["stage"] for s in recording.stages]
    assert any(name.startswith("loading torch_cnn.pt2") for name in names), names
    # the samples of all rounds run once per model, counted as they go
    assert {"stage": "running torch_cnn.pt2 on 60 samples", "total": 60, "advanced": 60} in recording.stages


def _run_with_terminal_stderr(*args: str) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (as a person's shell has it), stdout on a pipe."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100")
    proc = subprocess.run([sys.executable, "-m", "convrepair", *args], stdout=subprocess.PIPE, stderr=slave, env=env, timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, proc.stdout.decode(), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_progress_on_a_terminal_and_never_with_json_to_stdout(fixtures_dir):
    model = fixtures_dir / "torch_cnn.pt2"
    data = fixtures_dir / "digits_test_nchw.npz"
    code, stdout, terminal = _run_with_terminal_stderr("check", model, model, "--data", data, "--rounds", "3", "--samples", "50")
    assert code == 0, terminal[-2000:]
    assert "running torch_cnn.pt2 on" in terminal and "loading torch_cnn.pt2" in terminal
    assert "running torch_cnn.pt2 on" not in stdout  # the report stays clean
    code, stdout, terminal = _run_with_terminal_stderr("check", model, model, "--data", data, "--rounds", "3", "--samples", "50",
                                                       "--json", "-")
    assert code == 0 and stdout.lstrip().startswith("{")
    assert "running torch_cnn.pt2 on" not in terminal and "loading" not in terminal


def test_no_display_unless_stderr_is_a_terminal(monkeypatch):
    class Pipe(io.StringIO):
        def isatty(self):
            return False

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Pipe())
    assert progress.for_terminal() is progress.NULL
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert isinstance(progress.for_terminal(), progress.RichProgress)
    assert progress.for_terminal("-") is progress.NULL and progress.for_terminal(quiet=True) is progress.NULL


def _render(table: Table, width: int, drop=()) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(fit(table, width, drop))
    return console.export_text()


def test_a_table_fits_its_width_with_numbers_whole():
    table = Table(title="t")
    for name in ("name", "why", "p-value", "max |Δ|", "agreement", "extra"):
        table.add_column(name)
    table.add_row("precision_fallback", "fixed 18 of 22 flipped sample(s), broke 2; still discrepant", "1.2e-174",
                  "0.000123456", "99.20%", "0.5")
    text = _render(table, 60, drop=("extra",))
    assert max(len(line) for line in text.splitlines()) <= 60
    for number in ("1.2e-174", "0.000123456", "precision_fallback"):
        assert number in text, text
    assert "…" not in text
    assert "not shown at 60 columns: extra, agreement" in " ".join(text.split())  # `drop` first, then from the right
    wide = _render(table, 200)
    assert "not shown" not in wide and "0.5" in wide
