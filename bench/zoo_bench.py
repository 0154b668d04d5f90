"""The zoo benchmark: cost of check / localize / repair / convert on real models, and the fault matrix.

    python bench/zoo_bench.py [--size ci|full] [--only mobilenetv2,resnet18] [--routes onnx,onnx-int8]
                              [--repeats 3] [--seed 0] [--samples N] [--faults all|none|weights,...]
    python bench/zoo_bench.py --tables run1.json run2.json     # print the tables of earlier runs, merged

Every measured command runs as its own subprocess (the real CLI); its wall time and peak RSS
(ru_maxrss from wait4, which covers the contained worker it forks) are taken in this one run.
Per (model, route), every contender (plain inference of both models on the same samples — the
baseline —, check, check --localize, the convert itself, and on the ONNX route the exporter alone
and a weights repair) runs --repeats times in one seeded shuffled order (printed); the report
gives median and min–max, and ratios of medians (to plain inference; convert to the exporter
alone). Warm, stated: the first plain inference after the route's conversion is reported apart
(`plain_warmup_*`) and left out of the medians; every measured run is a fresh process (imports,
model load) with the files in the OS page cache. A run that fails is listed, never in a median.
The fault matrix injects FetaFix's fault classes (fixtures/faults.py ZOO_FAULTS) into each model's
fp32 ONNX conversion and records, once per fault: detected, localized to the injected node, typed,
repaired (verdict `repaired` and the repair's own held-out split `equivalent`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "fixtures")]

from bench.repeat import Spread, ratio, schedule  # noqa: E402
from bench.zoo.manifest import ZOO  # noqa: E402
from bench.zoo_tables import print_tables  # noqa: E402

PY = sys.executable
BASELINES = ROOT / "bench" / "zoo_baselines.py"  # plain inference, the exporter alone: what a contender is compared with
CWD = tempfile.gettempdir()  # an empty scratch folder once main() runs: `python -m` imports from its cwd
HOLDOUT_CHECK = False  # --holdout-check: also check each repaired model on the zoo's separate holdout file
REPEATS = 3  # --repeats: runs of every contender, the baseline included
SEED = 0  # --seed: of the shuffled order


@dataclass
class Run:
    seconds: float
    peak_mb: float
    code: int
    json: dict | None = None


def measure(args: list, json_out: Path | None = None, timeout: float = 1800) -> Run:
    """Run a subprocess; wall time and its peak RSS (with the children it waited for)."""
    if json_out:
        json_out.unlink(missing_ok=True)  # an earlier repeat's report is never read as this run's
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=err, cwd=CWD,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if proc.returncode not in (0, 1):
            err.seek(0)
            print(f"  ! {' '.join(map(str, args[2:5]))}: exit {proc.returncode}: {err.read().decode()[-400:]}", file=sys.stderr)
    data = json.loads(json_out.read_text()) if json_out and json_out.exists() and json_out.stat().st_size else None
    return Run(round(seconds, 2), round(usage.ru_maxrss / 1024, 1), proc.returncode, data)


def cli(*args) -> list:
    return [PY, "-m", "convrepair", *args]


def cost_rows(name: str, entry: dict, zoo: Path, work: Path, convert_only: bool = False,
              routes: list[str] | None = None) -> tuple[list[dict], dict[str, Path]]:
    """Per route: check, check --localize (and, on the ONNX route, repair and the exporter alone)
    against plain inference, each `REPEATS` times in a seeded shuffled order; medians, min–max,
    ratios of medians. With `convert_only`, only the ONNX conversion the fault matrix needs."""
    model = ZOO[name]
    source, data = zoo / entry["model"], zoo / entry["data"]
    n = str(entry["samples"])
    rows, converted = [], {}
    wanted = ["onnx"] if convert_only else [r for r in [*model.fp32_routes, *model.lossy_routes] if not routes or r in routes]
    for route in wanted:
        base = source
        if route.startswith("onnx-") or route == "torch":
            if "onnx" not in converted:  # the ONNX these routes start from (not measured)
                first = measure(cli("convert", source, "--to", "onnx", "--out-dir", work / "onnx", "--force", "--json",
                                    work / "c-onnx.json"), work / "c-onnx.json")
                if first.code == 0 and first.json:
                    converted["onnx"] = Path(first.json["conversions"][0]["output"]["path"])
            base = converted.get("onnx")
            if base is None:
                rows.append({"model": name, "route": route, "error": "the ONNX conversion it starts from failed"})
                continue
        convert_args = ["convert", base, "--to", route, "--force"]
        conv = measure(cli(*convert_args, "--out-dir", work / route, "--json", work / f"c-{route}.json"), work / f"c-{route}.json")
        if conv.code != 0 or not conv.json:
            rows.append({"model": name, "route": route, "error": "conversion failed", "exit": conv.code})
            continue
        target = Path(conv.json["conversions"][0]["output"]["path"])
        converted[route] = target
        if convert_only:
            return [], converted
        check = ["check", source, target, "--data", data, "--rounds", "1", "--samples", n]
        jobs = {
            "plain": lambda: measure([PY, BASELINES, "infer", source, target, data, n]),
            "check": lambda: measure(cli(*check, "--no-localize", "--json", work / "k.json"), work / "k.json"),
            "localize": lambda: measure(cli(*check, "--localize", "--json", work / "l.json"), work / "l.json"),
            "convert": lambda: measure(cli(*convert_args, "--out-dir", work / f"{route}-again", "--json", work / "c2.json")),
        }
        if route == "onnx":
            jobs["exporter"] = lambda: measure([PY, BASELINES, "export", source, work / "alone.onnx"])
            jobs["repair"] = lambda: _as_run(repair_run(source, target, "weights", data, zoo / entry["holdout"], work))
        warmup = jobs["plain"]()  # the first run of this (model, route) after its conversion: reported, not in the medians
        order = schedule(list(jobs), REPEATS, f"{SEED}/{name}/{route}")
        print(f"  {name} {route}: order (seed {SEED}): {', '.join(order)}", flush=True)
        runs: dict[str, list[Run]] = {c: [] for c in jobs}
        for contender in order:
            runs[contender].append(jobs[contender]())
        rows.append(cost_row(name, route, runs, order, warmup, conv))
        print(f"  {name} {route}: {rows[-1]}", flush=True)
    return rows, converted


def _as_run(result: dict) -> Run:
    return Run(result.get("seconds", 0.0), result.get("peak_mb", 0.0), result.get("exit", 2), result)


def cost_row(name: str, route: str, runs: dict[str, list[Run]], order: list[str], warmup: Run, conv: Run) -> dict:
    """Median, min–max and ratio of medians to plain inference; every failed run listed, none in a median."""
    row = {"model": name, "route": route, "repeats": REPEATS, "seed": SEED, "order": order,
           "warm": "every measured process starts fresh (imports and model load included) after one discarded "
                   "plain-inference run of this model and route: files in the OS page cache; the source IR cache "
                   f"(CONVREPAIR_IR_CACHE) {os.environ.get('CONVREPAIR_IR_CACHE', 'at its default')}: a Keras source's "
                   "IR is exported by the first run that needs it and reused by the rest",
           "plain_warmup_s": warmup.seconds, "plain_warmup_mb": warmup.peak_mb,
           "convert_first_s": conv.seconds, "convert_first_mb": conv.peak_mb,
           "failures": [f"{c} run {i + 1}: exit {r.code}" for c, rs in runs.items() for i, r in enumerate(rs) if r.code not in (0, 1)]}
    spreads = {}
    for contender, results in runs.items():
        ok = [r for r in results if r.code in (0, 1)]
        for unit, attr in (("s", "seconds"), ("mb", "peak_mb")):
            spread = spreads[contender, unit] = Spread.of([getattr(r, attr) for r in ok])
            row[f"{contender}_{unit}"] = spread and spread.median
            row[f"{contender}_{unit}_range"] = spread and [spread.low, spread.high]
    for contender in ("check", "localize", "repair"):
        if contender in runs:
            row[f"{contender}_x"] = ratio(row[f"{contender}_s"], row["plain_s"])
            row[f"{contender}_mb_x"] = ratio(row[f"{contender}_mb"], row["plain_mb"])
    row["verdict"] = _verdicts([(r.json or {}).get("verdict") for r in runs["check"] + runs["localize"]])
    if "repair" in runs:
        row["repair_verdict"] = _verdicts([(r.json or {}).get("verdict") for r in runs["repair"]])
    if "exporter" in runs:
        row["convert_mb_x"] = ratio(row["convert_mb"], row["exporter_mb"])
        row["convert_exporter_x"] = ratio(row["convert_s"], row["exporter_s"])
    row["spread"] = {f"{c}_{u}": s.text() for (c, u), s in spreads.items() if s}
    return row


def _verdicts(values: list) -> str | None:
    """One verdict when every run agrees; all of them, '|'-joined, when the runs disagree."""
    seen = sorted({v for v in values if v})
    return "|".join(seen) if seen else None


def repair_run(source: Path, onnx: Path, fault: str, data: Path, holdout: Path, work: Path) -> dict:
    """Inject one fault class into the fp32 ONNX, repair it, judge the repair on held-out samples."""
    from faults import inject_zoo_fault

    faulty = work / f"faulty-{fault}.onnx"
    try:
        node, expected = inject_zoo_fault(onnx, faulty, fault)
    except (KeyError, IndexError, StopIteration) as exc:
        return {"fault": fault, "applies": False, "why": str(exc)[:80]}
    repaired = work / f"repaired-{fault}.onnx"
    for old in work.glob(f"{repaired.name}*"):  # an earlier repeat's model and sidecar (else: exit 2, already exists)
        old.unlink()
    run = measure(cli("repair", source, faulty, "--out", repaired, "--data", data, "--budget-seconds", "60",
                      "--json", work / "r.json"), work / "r.json")
    report = run.json or {}
    before = report.get("check_before") or {}
    located = before.get("localization") or {}
    fault_json = located.get("fault") or {}
    first = located.get("first_divergent") or {}
    after = report.get("check_after") or {}
    held_out = after.get("verdict")  # the repair's own held-out split, never used by its search
    if repaired.exists() and HOLDOUT_CHECK:
        check = measure(cli("check", source, repaired, "--data", holdout, "--rounds", "1", "--samples", "1000",
                            "--no-localize", "--json", work / "h.json"), work / "h.json")
        held_out = (check.json or {}).get("verdict")
    return {
        "fault": fault, "applies": True, "node": node, "expected_type": expected,
        "detected": before.get("verdict") == "discrepant",
        # the op the explanation names (or its layer) is the injected one; for an inserted op: that
        # op or the input it hangs on. A right type at the wrong place is not localized.
        "localized": localized_at(node, first, faulty),
        "typed": fault_json.get("type") == expected, "type": fault_json.get("type"),
        "located_at": first.get("target_layer"), "verdict": report.get("verdict"),
        "repaired": report.get("verdict") == "repaired" and held_out == "equivalent", "held_out": held_out,
        "seconds": run.seconds, "peak_mb": run.peak_mb, "exit": run.code,
    }


def localized_at(node: str, first: dict, faulty: Path) -> bool:
    """Did localization name the injected node? (Its layer counts: a bias Add inside a segment, a
    lost Relu of the source.) An op we inserted may also be named by the tensor it hangs on."""
    from faults import hangs_on

    named = {first.get("target_layer"), first.get("node")} - {None}
    if node in named:
        return True
    return node.startswith("injected") and hangs_on(faulty, node) in named


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["ci", "full"], default="ci")
    parser.add_argument("--only", default=",".join(["resnet18", "mobilenetv2", "minilm", "resnet50", "densenet121", "inceptionv3"]),
                        help="comma-separated zoo models (default: all six)")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder (default fixtures/out/zoo[-full])")
    parser.add_argument("--faults", default="all", help="comma-separated fault classes, 'all' or 'none'")
    parser.add_argument("--json", type=Path, default=ROOT / "fixtures" / "out" / "zoo-bench.json")
    parser.add_argument("--holdout-check", action="store_true",
                        help="also check every repaired model on the zoo's holdout file (one more run per fault)")
    parser.add_argument("--no-cost", action="store_true", help="fault matrix only (convert to ONNX, no cost rows)")
    parser.add_argument("--tables", nargs="+", type=Path, help="print the tables of earlier runs' JSON files (merged)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every contender, plain inference included (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order of the runs (default 0)")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per check and plain inference (default: the zoo's data file at ci, 500 at full; "
                             "never more than the data file holds)")
    parser.add_argument("--routes", default=None, help="comma-separated routes to measure (default: every route of each model)")
    args = parser.parse_args(argv)
    from bench.zoo.build import build
    from faults import ZOO_FAULTS

    global HOLDOUT_CHECK, CWD, REPEATS, SEED
    HOLDOUT_CHECK, REPEATS, SEED = args.holdout_check, args.repeats, args.seed
    if REPEATS < 1:
        parser.error("--repeats must be at least 1")
    if args.tables:
        runs = [json.loads(Path(p).read_text()) for p in args.tables]
        print_tables([r for run in runs for r in run["cost"]], [r for run in runs for r in run["faults"]], runs[0]["size"])
        return 0

    zoo = args.zoo or ROOT / "fixtures" / "out" / ("zoo" if args.size == "ci" else "zoo-full")
    names = args.only.split(",")
    index = build(zoo, args.size, names)
    faults = [] if args.faults == "none" else list(ZOO_FAULTS) if args.faults == "all" else args.faults.split(",")
    cost, matrix = [], []
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as scratch:
        CWD = Path(scratch) / "cwd"
        CWD.mkdir()
        for name in names:
            work = Path(scratch) / name
            work.mkdir()
            entry = index[name] | {"samples": args.samples or (500 if args.size == "full" else ZOO[name].sizes[args.size].samples)}
            rows, converted = cost_rows(name, entry, zoo, work, args.no_cost, args.routes and args.routes.split(","))
            cost += rows
            for fault in faults:
                if "onnx" not in converted:
                    break
                row = {"model": name} | repair_run(zoo / entry["model"], converted["onnx"], fault,
                                                    zoo / entry["data"], zoo / entry["holdout"], work)
                matrix.append(row)
                print(f"  {name} {fault}: {row}", flush=True)
            write_json(args.json, {"size": args.size, "repeats": REPEATS, "seed": SEED, "partial": True, "cost": cost, "faults": matrix})
    summary = print_tables(cost, matrix, args.size)
    payload = {"size": args.size, "repeats": REPEATS, "seed": SEED, "models": {n: index[n] for n in names}, "cost": cost, "faults": matrix, "summary": summary}
    write_json(args.json, payload)
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
