"""The review page of a repaired int8 model, made through the real CLI and opened in headless
Chromium: every number a reviewer decides from is on the rendered page as text.

CI (CI=true) must have Chromium (`.ci/run` installs Debian's `chromium`); a developer's machine
without it skips the browser test and says why."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import run_cli
from convrepair.report.terminal import human_size

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _need_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but headless Chromium is not installed (Debian package `chromium`); the review page must be tested")
        pytest.skip("headless Chromium (Debian package `chromium`) is not installed on this machine")
    return CHROMIUM


@pytest.fixture(scope="module")
def int8_review(fixtures_dir, tmp_path_factory) -> Path:
    """An int8 conversion calibrated on too-dark digits, repaired (the precision fallback beside a
    PSO patch, --prefer exact), signed, then approved by a reviewer: as in fixtures/demo.sh."""
    root = tmp_path_factory.mktemp("review")
    int8 = root / "torch_cnn.int8-dim.onnx"
    result = run_cli("convert", fixtures_dir / "torch_cnn.pt2", "--to", "onnx-int8", "--calibration",
                     fixtures_dir / "digits_calib_dim_nchw.npz", "--out", int8)
    assert result.code == 0, result.stderr
    for name, role in (("service", "service"), ("reviewer", "reviewer")):
        result = run_cli("keys", "init", "--name", name, "--dir", root / "keys", "--trust", root / "trust.json", "--role", role)
        assert result.code == 0, result.stderr
    result = run_cli("repair", fixtures_dir / "torch_cnn.pt2", int8, "--out", root / "job" / "patched.onnx",
                     "--data", fixtures_dir / "digits_all_nchw.npz", "--accept-improvement", "--prefer", "exact",
                     "--lenses", "all", "--sign-key", root / "keys" / "service.key", "--json", root / "repair.json")
    assert result.code in (0, 1), result.stderr  # `improved` (fewer flips, not equivalent) exits 1 and is still signed
    result = run_cli("approve", root / "job" / "patched.onnx.log.dsse.json", "--key", root / "keys" / "reviewer.key",
                     "--comment", "first conv in fp32; fewer flips")
    assert result.code == 0, result.stderr
    result = run_cli("-q", "show", root / "job" / "patched.onnx.log.dsse.json", "--html", root / "review.html")
    assert result.code == 0, result.stderr
    return root


class _Text(HTMLParser):
    """The text a reader sees: everything outside <style>, <script> and closed <details>."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script", "title"):
            self.skip += 1

    def handle_endtag(self, tag):
        if tag in ("style", "script", "title"):
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def visible_text(dom: str) -> str:
    """The text before the collapsed full-JSON dump (a number only there would not count)."""
    parser = _Text()
    parser.feed(dom.split("<summary>full log (JSON)")[0])
    return " ".join(" ".join(parser.parts).split())


def expected_numbers(report: dict) -> list[str]:
    """What the decision card must say, formatted as the page formats it, from the repair's own JSON."""
    held, after, choice, bound = report["check_before_held_out"], report["check_after"], report["choice"], report["held_out"]
    numbers = [f"{held['label_agreement']:.2%} → {after['label_agreement']:.2%}", f"{len(held['flips'])} → {len(after['flips'])}",
               f"one-sided 95% upper bound on the flip rate {bound['flip_rate_upper_bound_before']:.2%} → "
               f"{bound['flip_rate_upper_bound_after']:.2%}", report["verdict_reason"],
               report["source"]["sha256"], report["target"]["sha256"], report["output"]["sha256"], str(report["splits"]["held_out"])]
    for option in choice["options"]:
        numbers += [f"{option['held_out_label_agreement']:.2%}", f"{option['inference_ms']:.3g}", human_size(option["bytes"])]
    numbers += [f"{choice['target']['inference_ms']:.3g}", str(choice["target"]["held_out_flips"])]
    cost = report["cost"]  # the price on the card: size, latency and the output's precision mix
    numbers += [f"({cost['size_ratio']:.2f}×)", f"{cost['before']['latency_ms']:.3g} ms → {cost['after']['latency_ms']:.3g} ms"]
    mix = cost["after"]["precision"]["parameters"]
    numbers += [f"{kind} {count:,} ({count / sum(mix.values()):.1%})" for kind, count in mix.items()]
    numbers += report["lenses"]["robustness"]["flags"]  # lens flags on the card
    return numbers


@pytest.mark.slow
def test_review_page_in_headless_chromium_shows_every_number_as_text(int8_review):
    chromium = _need_chromium()
    page, shot = int8_review / "review.html", int8_review / "review.png"
    report = json.loads((int8_review / "repair.json").read_text())
    # the fixture's property, first: a repair was written, chosen from two options
    assert report["verdict"] in ("repaired", "improved"), report["verdict"]
    assert len((report["choice"] or {}).get("options", [])) == 2, report["choice"]
    flags = [*FLAGS, f"--user-data-dir={int8_review / 'chromium-profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-800:]
    text = visible_text(dom.stdout)
    for number in expected_numbers(report):
        assert number in text, f"{number!r} is not on the rendered page"
    for words in ("torch_cnn", "torch_cnn.pt2", "torch_cnn.int8-dim.onnx", "patched.onnx", "pt2 → onnx", "onnx-int8",
                  report["verdict"], "approved", "first conv in fp32; fewer flips", "chain", "intact", "precision_fallback", "pso_patch",
                  "chosen", "checks hold", "Per-layer divergence", "threshold: diverged", "above 0.1", "Label agreement per round", "seed 0",
                  "relative L2 error", "Reliability lenses", "ECE", "Cost of the repair", "Lens flags",
                  "Fused: the target computes this layer together with the next one", "(the reference"):
        assert words in text, f"{words!r} is not on the rendered page"
    assert "\u2026" not in re.sub(r"<pre>.*?</pre>", "", dom.stdout, flags=re.S).split("Reliability lenses")[0]  # no cut names
    assert dom.stdout.count("<svg") >= 10
    colours = screenshot(chromium, flags, page, shot, (1200, 3000))
    assert len(colours) > 200  # charts and text, not a blank sheet
    # the card's verdict badge is drawn in its colour near the top (orange: improved; green: repaired)
    badge = {"improved": (0xC7, 0x77, 0x00), "repaired": (0x2E, 0x7D, 0x32)}[report["verdict"]]
    assert badge in screenshot_colours(shot, top=300)


VERDICT_COLOURS = {"approved": (0x2E, 0x7D, 0x32), "repaired": (0x2E, 0x7D, 0x32), "improved": (0xC7, 0x77, 0x00)}


def screenshot(chromium: str, flags: list[str], page: Path, shot: Path, size: tuple[int, int]) -> set[tuple[int, int, int]]:
    """A screenshot of `page` in headless Chromium, its colours; kept under $CONVREPAIR_SCREENSHOTS
    when set (to look at)."""
    result = subprocess.run([chromium, *flags, f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}", page.as_uri()],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr[-800:]
    keep = os.environ.get("CONVREPAIR_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == size
    return screenshot_colours(shot)


def screenshot_colours(shot: Path, top: int | None = None) -> set[tuple[int, int, int]]:
    from PIL import Image

    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        if top is not None:
            rgb = rgb.crop((0, 0, rgb.width, top))
        colours = rgb.getcolors(maxcolors=1 << 22)
    assert colours is not None
    return {colour for _, colour in colours}


@pytest.mark.slow
def test_review_index_in_headless_chromium_links_the_page(int8_review):
    """The index (`review --html`) as a browser shows it: one row for the log, its columns, and a
    relative link that leads to the log's page."""
    chromium = _need_chromium()
    index = int8_review / "index-browser.html"
    result = run_cli("-q", "review", "--registry", int8_review, "--html", index)
    assert result.code == 0, result.stderr
    flags = [*FLAGS, f"--user-data-dir={int8_review / 'chromium-profile-index'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-800:]
    text = visible_text(dom.stdout)
    report = json.loads((int8_review / "repair.json").read_text())
    held = report["check_before_held_out"]["label_agreement"], report["check_after"]["label_agreement"]
    for words in ("1 log(s) (all)", "torch_cnn", report["verdict"], "approved", f"{held[0]:.2%} → {held[1]:.2%}"):
        assert words in text, f"{words!r} is not on the rendered index"
    links = re.findall(r'<a href="([^"]+)"', dom.stdout)
    assert len(links) == 1 and not links[0].startswith(("/", "file:", "http"))
    linked = (index.parent / html.unescape(links[0])).resolve()
    assert linked.is_file() and "Repair review: torch_cnn" in linked.read_text()
    colours = screenshot(chromium, flags, index, int8_review / "index.png", (1200, 500))
    assert VERDICT_COLOURS["approved"] in colours and VERDICT_COLOURS[report["verdict"]] in colours


@pytest.mark.slow
def test_review_page_is_one_self_contained_file(int8_review):
    page = (int8_review / "review.html").read_text()
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert "url(http" not in page and "@import" not in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "SVG ids collide between charts"
    assert page.count("<svg") >= 10 and "<text" in page  # chart text stays text


@pytest.mark.slow
def test_page_escapes_what_a_log_carries(int8_review):
    """A log's strings (file names, reasons) are data, never markup."""
    from convrepair.ledger.dsse import read_envelope, statement_of
    from convrepair.report.html import log_page

    log = int8_review / "job" / "patched.onnx.log.dsse.json"
    envelope, _ = read_envelope(log)
    statement = statement_of(envelope, log)
    statement["predicate"]["repair"]["attempts"][0]["reason"] = "<img src=x onerror=alert(1)>"
    statement["predicate"]["lenses"] = None  # their charts are not what this test is about (and cost seconds)
    page = log_page(statement, envelope, log)
    assert "<img src=x" not in page and html.escape("<img src=x onerror=alert(1)>") in page


@pytest.mark.slow
def test_review_index_lists_every_log_with_status_and_verdict(int8_review):
    result = run_cli("-q", "review", "--registry", int8_review, "--status", "all", "--html", int8_review / "index.html")
    assert result.code == 0, result.stderr
    page = (int8_review / "index.html").read_text()
    text = visible_text(page)
    assert "1 log(s) (all)" in text and "approved" in text and "improved" in text and "patched.onnx.log.dsse.json" in text
    assert "<script" not in page


@pytest.mark.slow
def test_the_terminal_report_of_the_same_repair_fits_80_columns(int8_review, monkeypatch):
    """Tables wrap or drop columns at 80 columns; no number is cut to `0.00…`."""
    import io

    from rich.console import Console

    from convrepair.report import terminal

    report = json.loads((int8_review / "repair.json").read_text())
    console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
    monkeypatch.setattr(terminal, "console", console)
    terminal.render_repair(report)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    flat = " ".join(text.split())
    for option in (report["choice"] or {}).get("options", []):  # side-by-side options, when there were several
        assert f"{option['held_out_label_agreement']:.2%}" in flat and f"{option['inference_ms']:.3g}" in flat
    for row in _summary(report):
        assert f"{row['accuracy']:.2%}" in flat and f"{row['ece_before']:.4f} → {row['ece_after']:.4f}" in flat
    assert "not shown at 80 columns:" in flat  # what did not fit is named, not cut


def _summary(report):
    from convrepair.report.summary import summary_rows

    return summary_rows(report["lenses"])


def _statement(repair: dict) -> tuple[dict, dict]:
    predicate = {"repair": repair, "verdict": repair["verdict"], "files": [], "lenses": None, "conversion": None,
                 "job": {"id": "job-1", "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00"},
                 "tool_versions": {"convrepair": "0.1.0"}}
    return {"predicate": predicate}, {"signatures": [{"keyid": "ab" * 32}]}


def test_pages_of_the_other_log_kinds_render():
    """A model repaired against its own labels or version N-1, and a target that needed nothing:
    the card says what it has, the page never fails on what it lacks."""
    from convrepair.report.html import log_page

    regression = {"mode": "regression", "model": {"path": "v2.onnx", "format": "onnx", "sha256": "c" * 64}, "previous": "v1.onnx",
                  "output": {"path": "v2.repaired.onnx", "format": "onnx", "sha256": "d" * 64}, "verdict": "repaired",
                  "attempts": [{"kind": "pso_patch", "reason": "fixed 30 of 32"}],
                  "held_out": {"accuracy_before": 0.9012, "accuracy_after": 0.9634, "repair_rate": 0.94, "negatives": 32,
                               "break_rate": 0.004}}
    page = visible_text(log_page(*_statement(regression)))
    assert "regression repair against v1.onnx" in page and "90.12% → 96.34%" in page and "0.40%" in page and "d" * 64 in page
    equivalent = {"source": {"path": "a.keras", "format": "keras", "sha256": "a" * 64},
                  "target": {"path": "a.onnx", "format": "onnx", "sha256": "b" * 64}, "output": None,
                  "verdict": "already_equivalent", "attempts": [], "check_after": None, "check_before_held_out": None,
                  "splits": {"search": 10, "held_out": 10}, "choice": None,
                  "check_before": {"verdict": "equivalent", "label_agreement": 1.0, "flips": [], "samples": 10,
                                   "disagreement_upper_bound": 0.26, "localization": None, "rounds": []}}
    page = visible_text(log_page(*_statement(equivalent)))
    assert "already_equivalent" in page and "100.00%" in page and "nothing to repair" in page and "b" * 64 in page


def test_layer_names_are_wrapped_not_cut_and_the_model_comes_from_the_registry_path(tmp_path):
    from convrepair.report.decision import model_and_version
    from convrepair.report.svg import layer_divergence

    fused = "sequential/conv2d/BiasAdd;sequential/conv2d/Conv2D;sequential/conv2d/BiasAdd/ReadVariableOp"
    chart = layer_divergence([{"source_layer": fused, "target_layer": fused, "rel_l2": 7.75e-07, "status": "ok"},
                              {"source_layer": "b", "target_layer": "b", "rel_l2": 0.31, "status": "diverged"}], 1e-3, "t")
    text = " ".join(re.sub(r"<[^>]+>", " ", chart).split())
    for part in fused.split(";"):
        assert part in text.replace(" ", "") or part in text
    assert "7.75e-07 (ok)" in text and "0.31 (diverged)" in text and "above 0.001" in text
    log = tmp_path / "digits" / "3" / "convrepair" / "onnx-int8" / "repair.log.dsse.json"
    assert model_and_version({}, log) == ("digits", "3")
    assert model_and_version({"repair": {"source": {"path": "/m/torch_cnn.pt2"}}}, tmp_path / "x.dsse.json")[0] == "torch_cnn"
