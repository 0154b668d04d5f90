"""How often one `repair` resolves, hashes and loads each model, and what it costs, in one run.

    python bench/job_bench.py [--keep DIR]

Two repairs on the fixtures (Keras source, its ONNX conversion with conv2's pads broken; and the
PyTorch source with conv1's bias zeroed), each run (a) in-process with counters on the engine's
model resolution (`model_ref`), hashing (`file_digests`), runner loads (`PluginRegistry.load`) and
ONNX exports for localization (`convert`), and (b) as a fresh `convrepair repair` process measured
with wait4 (wall time, peak RSS); (c) the counted repair alone in a fresh process (wall, peak RSS). Needs the built fixtures (CONVREPAIR_FIXTURES or fixtures/out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))


def counted_repair(source: Path, target: Path, out: Path, data: Path) -> tuple[Counter, str]:
    import convrepair.convert
    import convrepair.model
    from convrepair.plugins import PluginRegistry, default_registry
    from convrepair.repair import RepairConfig, run_repair

    counts: Counter = Counter()

    def wrap(owner, name, key):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            ref = next((a for a in args if hasattr(a, "sha256")), None)
            first = next((a for a in args if isinstance(a, Path) or (isinstance(a, str) and "/" in a)), None)
            path = ref.path if ref is not None else (Path(first) if first is not None else None)
            role = "source" if path is not None and path.resolve() == source.resolve() else (
                "target" if path is not None and path.resolve() == target.resolve() else "other")
            counts[f"{key}[{role}]"] += 1
            return original(*args, **kwargs)

        setattr(owner, name, counted)
        return original

    saved = [(convrepair.model, "file_digests", wrap(convrepair.model, "file_digests", "hash")),
             (PluginRegistry, "load", wrap(PluginRegistry, "load", "load")),
             (PluginRegistry, "detect_format", wrap(PluginRegistry, "detect_format", "resolve")),
             (convrepair.convert, "convert", wrap(convrepair.convert, "convert", "export"))]
    try:
        report = run_repair(default_registry(), source, target, out, RepairConfig(data=data))
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    return counts, report.verdict


def timed_cli(*args: str) -> tuple[float, float, int]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "convrepair", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - started, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--no-cli", action="store_true")
    parser.add_argument("--baseline", type=Path, help="a tree of an older convrepair (git archive) to measure alongside")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--one", nargs=4, metavar=("SOURCE", "TARGET", "OUT", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        counts, verdict = counted_repair(*map(Path, args.one))
        print(json.dumps({"verdict": verdict, **dict(sorted(counts.items()))}))
        return 0
    import faults as fi

    from convrepair.convert import convert
    from convrepair.plugins import default_registry
    from convrepair.sidecar import read_sidecar, write_sidecar

    fixtures = Path(os.environ.get("CONVREPAIR_FIXTURES", ROOT / "fixtures" / "out"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="job-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, source, data, fault, fault_args in [
        ("keras pads", fixtures / "keras_cnn.keras", fixtures / "digits_all_nhwc.npz", fi.asymmetric_pads, ("conv2",)),
        ("torch bias", fixtures / "torch_cnn.pt2", fixtures / "digits_all_nchw.npz", fi.zero_bias, ("/Conv_1",)),
    ]:
        clean = convert(default_registry(), source, "onnx", out_dir=work / name.replace(" ", "_")).output.path
        target = fi.inject(clean, clean.with_name("broken.onnx"), fault, *fault_args)
        write_sidecar(target, read_sidecar(clean))
        cases.append((name, source, target, data))
    rows = []
    trees = [("now", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    for name, source, target, data in cases:
      for _ in range(args.repeats):
       for tree, root in trees:  # interleaved, so machine load hits both alike
        started = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=f"{root}:{ROOT / 'fixtures'}") if root else None
        proc = subprocess.Popen([sys.executable, __file__, "--one", str(source), str(target),
                                 str(work / f"{name.replace(' ', '_')}_fixed.onnx"), str(data)], stdout=subprocess.PIPE,
                                env=env, cwd=root or None)
        out = proc.stdout.read()
        _, _, usage = os.wait4(proc.pid, 0)
        row = {"case": name, "tree": tree, **json.loads(out.decode().strip().splitlines()[-1]),
               "engine_seconds": round(time.perf_counter() - started, 2), "engine_peak_rss_mb": round(usage.ru_maxrss / 1024)}
        if not args.no_cli and root is None:
            wall, rss, code = timed_cli("repair", str(source), str(target), "--out", str(work / "cli_fixed.onnx"),
                                        "--data", str(data), "-q")
            row |= {"cli_seconds": round(wall, 2), "cli_peak_rss_mb": round(rss), "cli_exit": code}
        rows.append(row)
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
