"""A model ten times larger (issue 21): convert, check and check --localize on the zoo's 334M-parameter
BERT-large-shaped encoder, against plain inference of both models, in one run.

    python bench/large_model_bench.py [--samples 16] [--repeats 3] [--seed 0] [--zoo DIR] [--work DIR]

Builds (or reuses) `bert_large` (bench/zoo/bert_large.py, sequence length 128) and converts it to
ONNX once with `convrepair convert` (that file is the check's target). Then every contender runs
--repeats times in one seeded shuffled order (printed), each a fresh process measured with wait4
(its ru_maxrss covers the contained worker it forks and waits for):
  plain      plain inference of both models on the check's samples (bench/zoo_baselines.py infer:
             each framework's runner, one model after the other, batches of 64) — the baseline
  plain-both the same with both models loaded at once (torch.export program and ONNX Runtime
             session over the same batches of 16), as a user comparing them by hand would
  check      convrepair check --rounds 1 --samples N --no-localize
  localize   convrepair check --rounds 1 --samples N --localize
  convert    convrepair convert --to onnx (the torch.onnx dynamo exporter inside our plugin)
  exporter   torch.onnx.export(dynamo=True) alone (bench/zoo_baselines.py export)
Median and min–max of wall time and peak RSS; ratios of medians: check / localize to plain (and to
plain-both), convert to the exporter alone. Warm, stated: every run is a fresh process with the
model files in the OS page cache (the build and the first conversion read them just before).
A failed run is listed and left out of every median.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.repeat import Spread, ratio, schedule  # noqa: E402

PY = sys.executable
BASELINES = ROOT / "bench" / "zoo_baselines.py"

BOTH_LOADED = """
import sys, numpy as np, onnxruntime as ort, torch
source, target, data, samples = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
arrays = np.load(data)
ids, mask = arrays["input_ids"][:samples], arrays["attention_mask"][:samples]
model = torch.export.load(source).module()
session = ort.InferenceSession(target, providers=["CPUExecutionProvider"])
names = [i.name for i in session.get_inputs()]
for start in range(0, len(ids), 16):
    batch = (ids[start:start + 16], mask[start:start + 16])
    with torch.no_grad():
        want = model(*(torch.from_numpy(a) for a in batch)).numpy()
    have = session.run(None, dict(zip(names, batch)))[0]
    assert np.abs(want - have).max() < 1e-3, np.abs(want - have).max()
"""


def measure(args: list, json_out: Path | None = None) -> dict:
    """One fresh process: wall seconds, peak RSS (MB, with the children it waited for), exit code."""
    if json_out and json_out.exists():
        json_out.unlink()
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=err, cwd=tempfile.gettempdir())
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        tail = ""
        if code not in (0, 1):
            err.seek(0)
            tail = err.read().decode(errors="replace")[-400:]
            print(f"  ! {' '.join(map(str, args[1:4]))}: exit {code}: {tail}", file=sys.stderr, flush=True)
    report = json.loads(json_out.read_text()) if json_out and json_out.exists() and json_out.stat().st_size else None
    return {"seconds": round(seconds, 2), "peak_mb": round(usage.ru_maxrss / 1024, 1), "code": code,
            "verdict": (report or {}).get("verdict"), "error": tail or None}


def cli(*args) -> list:
    return [PY, "-m", "convrepair", *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16, help="samples in the check's one round (default 16)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="of the shuffled order")
    parser.add_argument("--size", choices=["ci", "full"], default="full", help="zoo size (both: 334M parameters, 128 tokens)")
    parser.add_argument("--zoo", type=Path, default=ROOT / "fixtures" / "out" / "zoo-large")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a fresh temporary one)")
    parser.add_argument("--only", default=None, help="comma-separated contenders (default all)")
    parser.add_argument("--target", type=Path, default=None,
                        help="an earlier `convrepair convert --to onnx` of the same model to check against (skips the first conversion)")
    parser.add_argument("--json", type=Path, default=None, help="also write the runs and the table as JSON here")
    args = parser.parse_args(argv)

    from bench.zoo.build import build

    entry = build(args.zoo, args.size, ["bert_large"])["bert_large"]
    source, data = args.zoo / entry["model"], args.zoo / entry["data"]
    work = args.work or Path(tempfile.mkdtemp(prefix="convrepair-large-"))
    work.mkdir(parents=True, exist_ok=True)
    first: dict = {"seconds": None, "peak_mb": None, "given": str(args.target)}
    target = args.target
    if target is None:
        first = measure(cli("convert", source, "--to", "onnx", "--out-dir", work / "onnx", "--force", "--json", work / "c0.json"),
                        work / "c0.json")
        if first["code"] != 0:
            print(f"the first conversion failed: {first}", file=sys.stderr)
            return 1
        target = Path(json.loads((work / "c0.json").read_text())["conversions"][0]["output"]["path"])
    n = str(args.samples)
    check = ["check", source, target, "--data", data, "--rounds", "1", "--samples", n]
    (work / "both.py").write_text(BOTH_LOADED)
    jobs = {
        "plain": lambda: measure([PY, BASELINES, "infer", source, target, data, n]),
        "plain-both": lambda: measure([PY, work / "both.py", source, target, data, n]),
        "check": lambda: measure(cli(*check, "--no-localize", "--json", work / "k.json"), work / "k.json"),
        "localize": lambda: measure(cli(*check, "--localize", "--json", work / "l.json"), work / "l.json"),
        "convert": lambda: measure(cli("convert", source, "--to", "onnx", "--out-dir", work / "again", "--force",
                                       "--json", work / "c.json"), work / "c.json"),
        "exporter": lambda: measure([PY, BASELINES, "export", source, work / "alone.onnx"]),
    }
    if args.only:
        jobs = {k: v for k, v in jobs.items() if k in args.only.split(",")}
    order = schedule(list(jobs), args.repeats, args.seed)
    print(f"bert_large ({entry['alive'].get('parameters')} parameters, seq {entry['alive'].get('sequence')}), "
          f"{n} samples; first convert {first['seconds']} s, {first['peak_mb']} MB", flush=True)
    print(f"order (seed {args.seed}): {', '.join(order)}", flush=True)
    runs: dict[str, list[dict]] = {c: [] for c in jobs}
    for contender in order:
        runs[contender].append(jobs[contender]())
        print(f"  {contender:10s} {runs[contender][-1]}", flush=True)
    table = summarize(runs)
    print_table(table, args, entry, first)
    if args.json:
        args.json.write_text(json.dumps({"order": order, "first_convert": first, "runs": runs, "table": table,
                                         "samples": args.samples, "cpus": os.cpu_count()}, indent=2, default=vars))
    return 0


def summarize(runs: dict[str, list[dict]]) -> dict:
    table: dict = {}
    for contender, results in runs.items():
        ok = [r for r in results if r["code"] in (0, 1)]
        table[contender] = {"s": Spread.of([r["seconds"] for r in ok]), "mb": Spread.of([r["peak_mb"] for r in ok]),
                            "failed": [f"run {i + 1}: exit {r['code']}" for i, r in enumerate(results) if r["code"] not in (0, 1)],
                            "verdicts": sorted({r["verdict"] for r in ok if r["verdict"]})}
    return table


def print_table(table: dict, args, entry: dict, first: dict) -> None:
    print(f"\n{'contender':11s} {'wall s, median (min–max)':>28s} {'peak RSS MB, median (min–max)':>34s}  verdicts / failures")
    for name, row in table.items():
        s, mb = row["s"], row["mb"]
        print(f"{name:11s} {s.text() if s else '-':>28s} {mb.text() if mb else '-':>34s}  "
              f"{','.join(row['verdicts'])} {'; '.join(row['failed'])}")

    def show(value) -> str:
        return f"{value}x" if value is not None else "n/a (no successful run)"

    def median(name: str, unit: str):
        spread = table.get(name, {}).get(unit)
        return spread.median if spread else None

    print()
    for contender, target in (("check", 1.3), ("localize", 1.3)):
        for base in ("plain", "plain-both"):
            print(f"{contender} / {base:10s} time {show(ratio(median(contender, 's'), median(base, 's')))}   "
                  f"peak RSS {show(ratio(median(contender, 'mb'), median(base, 'mb')))}   (RSS target <= {target})")
    print(f"convert / exporter   time {show(ratio(median('convert', 's'), median('exporter', 's')))}   "
          f"peak RSS {show(ratio(median('convert', 'mb'), median('exporter', 'mb')))}   (RSS target <= 1.5)")
    for base in ("plain", "plain-both"):
        print(f"convert / {base:10s} peak RSS {show(ratio(median('convert', 'mb'), median(base, 'mb')))}   (RSS target <= 1.3)")
    print(f"\n{args.repeats} runs each, shuffled (seed {args.seed}); {args.samples} samples x 128 tokens, one round; "
          f"{os.cpu_count()} CPU cores; every run a fresh process, model files in the page cache")


if __name__ == "__main__":
    raise SystemExit(main())
