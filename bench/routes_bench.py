"""The real-bug hunt: every zoo model through every deployment route and precision, nothing injected.

    python bench/routes_bench.py [--size ci|full] [--zoo DIR] [--models resnet18,minilm]
                                 [--routes onnx,openvino-int8,...] [--json OUT.json] [--timeout 900]
    python bench/routes_bench.py --tables run1.json run2.json   # one table from earlier runs (a later
                                                                # run's row replaces an earlier one)

For each (model, target) the real CLI runs, each as its own subprocess: `convert` (int8 targets
calibrated on the model's held-out file, so calibration never sees the samples the check and the
repair use), `check` on the model's data (verdict, first divergent op, fault type), and on a
`discrepant` verdict `repair` (its outcome judged on the repair's own held-out split, which its
search never saw). The table is FetaFix's: route, model, precision, verdict, first divergent op,
fault type, repair outcome, seconds. Every failure is a row with the step, its exit code and the
one line that says why; a target with no route from the model's format is a row too. Missing zoo
models are built first (bench/zoo/build.py, one model per subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.zoo.manifest import ZOO  # noqa: E402

PY = sys.executable
LOSSY = {"onnx-fp16": "fp16", "onnx-int8": "int8", "tflite-int8": "int8", "openvino-fp16": "fp16",
         "openvino-int8": "int8", "litert-int8": "int8"}
NEEDS_CALIBRATION = {"onnx-int8", "tflite-int8", "openvino-int8", "litert-int8"}
COLUMNS = ["route", "model", "precision", "verdict", "agreement", "max_abs", "first_divergent", "fault_type",
           "repair", "held_out", "seconds", "exit", "reason"]
ERROR_PREFIX = re.compile(r"^convrepair: error: \S+: ")


def targets() -> list[str]:
    """Every conversion target the installed plugins offer, in a stable order."""
    from convrepair.plugins import default_registry

    registry = default_registry()
    offered = {spec.target for spec in registry.converters.values()
               if registry.plugin(spec.plugin).unavailable_reason() is None}
    return sorted(offered, key=lambda t: (t.split("-")[0], t))


def has_route(source: Path, target: str) -> str | None:
    """None when the registry finds a conversion path; else the reason it does not."""
    from convrepair.convert import plan_route
    from convrepair.errors import BadInput
    from convrepair.model import model_ref
    from convrepair.plugins import default_registry

    registry = default_registry()
    try:
        plan_route(registry, model_ref(source, registry).format, target)
    except BadInput as exc:
        return exc.one_line()
    return None


def run(args: list, work: Path, timeout: float) -> tuple[int, float, str]:
    """A CLI step in its own process: exit code, seconds, the last line of its stderr."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        try:
            code = subprocess.run([PY, "-m", "convrepair", *map(str, args)], stdout=subprocess.DEVNULL, stderr=err,
                                  cwd=work, timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).returncode
        except subprocess.TimeoutExpired:
            return 124, round(time.perf_counter() - started, 1), f"timed out after {timeout:.0f} s"
        err.seek(0)
        lines = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return code, round(time.perf_counter() - started, 1), (errors or lines or [""])[-1].strip()[:300]


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
    except json.JSONDecodeError:
        return {}


def hunt(name: str, entry: dict, zoo: Path, target: str, work: Path, timeout: float, memory_mb: int) -> dict:
    """One row: convert, check, and repair when the check finds a discrepancy."""
    source, data, holdout = zoo / entry["model"], zoo / entry["data"], zoo / entry["holdout"]
    row = {"route": target, "model": name, "precision": LOSSY.get(target, "fp32")}
    why = has_route(source, target)
    if why is not None:
        return row | {"verdict": "no route", "reason": why}
    out = work / name / target
    out.mkdir(parents=True, exist_ok=True)
    limit = ["--memory-mb", str(memory_mb)]
    args = ["convert", source, "--to", target, "--out-dir", out, "--force", *limit, "--json", out / "convert.json"]
    if target in NEEDS_CALIBRATION:
        args += ["--calibration", holdout]
    code, seconds, why = run(args, out, timeout)
    converted = load(out / "convert.json").get("conversions") or []
    if code != 0 or not converted:
        why = why if code != 0 else f"exit 0 but no conversion in {out / 'convert.json'}"
        return row | {"verdict": "convert failed", "exit": code, "reason": why, "seconds": seconds}
    output = Path(converted[0]["output"]["path"])
    row["precision"] = (load(Path(str(output) + ".convrepair.json")) or {}).get("precision") or row["precision"]
    code, took, why = run(["check", source, output, "--data", data, *limit, "--json", out / "check.json"], out, timeout)
    seconds += took
    check = load(out / "check.json")
    if code not in (0, 1) or not check:
        return row | {"verdict": "check failed", "exit": code, "reason": why, "seconds": round(seconds, 1)}
    located = check.get("localization") or {}
    first = located.get("first_divergent") or {}
    fault = located.get("fault") or {}
    row |= {"verdict": check.get("verdict"), "agreement": check.get("label_agreement"),
            "max_abs": max((o.get("max_abs") or 0 for o in check.get("outputs") or [] if isinstance(o, dict)), default=None),
            "first_divergent": first.get("target_layer") or first.get("node"),
            "fault_type": fault.get("type"), "fault_detail": fault.get("detail")}
    if check.get("verdict") == "discrepant":
        repaired = out / ("repaired" + output.suffix)
        code, took, why = run(["repair", source, output, "--data", data, "--out", repaired, "--force",
                               "--budget-seconds", "120", *limit, "--json", out / "repair.json"], out, timeout)
        seconds += took
        row |= repair_columns(load(out / "repair.json"), code)
        if code not in (0, 1):
            row |= {"exit": code, "reason": why}
    return row | {"seconds": round(seconds, 1)}


def repair_columns(report: dict, code: int) -> dict:
    """The repair's verdict, its held-out label agreement before → after, and its one-line reason."""
    held = report.get("held_out") or {}
    before, after = held.get("label_agreement_before"), held.get("label_agreement_after")
    shown = None
    if before is not None:
        shown = f"{100 * before:.0f}% → " + (f"{100 * after:.0f}%" if after is not None else "—") + f" of {held.get('n')}"
    return {"repair": report.get("verdict") or f"failed (exit {code})", "held_out": shown,
            "repair_reason": report.get("verdict_reason")}


def ensure_zoo(zoo: Path, size: str, models: list[str]) -> dict:
    """The zoo index, building the models it lacks (each in its own subprocess)."""
    index = load(zoo / "zoo.json")
    missing = [m for m in models if m not in index or not (zoo / index[m]["model"]).exists()]
    if missing:
        print(f"building {','.join(missing)} at {size} size into {zoo}", flush=True)
        subprocess.run([PY, str(ROOT / "bench" / "zoo" / "build.py"), "--out", str(zoo), "--size", size,
                        "--only", ",".join(missing)], check=False)
        index = load(zoo / "zoo.json")
    return index


def markdown(rows: list[dict]) -> str:
    def cell(row, column):
        value = row.get(column)
        if isinstance(value, float):
            return f"{value:.3g}" if column != "agreement" else f"{100 * value:.1f}%"
        if column == "reason" and value:
            value = ERROR_PREFIX.sub("", str(value))[:160]
        return "" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def merged(paths: list[Path]) -> list[dict]:
    """Rows of earlier runs, one per (model, route), the later run's winning, in first-seen order."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        for row in load(path).get("rows", []):
            rows[(row["model"], row["route"])] = row
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, nargs="+", default=None, help="print one table from earlier --json runs")
    parser.add_argument("--size", choices=["ci", "full"], default="ci")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder (default fixtures/out/zoo[-full])")
    parser.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo models (default all)")
    parser.add_argument("--routes", default=None, help="comma-separated targets (default every installed one)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows (and the command) as JSON")
    parser.add_argument("--work", type=Path, default=None, help="keep converted models here (default a temp dir)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per CLI step (default 900)")
    parser.add_argument("--memory-mb", type=int, default=2500,
                        help="memory limit of each step's contained worker (default 2500; a step over it is a row)")
    args = parser.parse_args(argv)
    if args.tables:
        print(markdown(merged(args.tables)))
        return 0
    zoo = (args.zoo or ROOT / "fixtures" / "out" / ("zoo" if args.size == "ci" else "zoo-full")).resolve()
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        print(f"routes_bench: unknown zoo model(s) {unknown}; known: {', '.join(ZOO)}", file=sys.stderr)
        return 2
    routes = [r for r in args.routes.split(",") if r] if args.routes else targets()
    index = ensure_zoo(zoo, args.size, models)
    work = (args.work or Path(tempfile.mkdtemp(prefix="routes-bench-"))).resolve()  # steps run in their own folder
    rows = []
    command = " ".join(["python", "bench/routes_bench.py", *(argv if argv is not None else sys.argv[1:])])
    for name in models:
        for target in routes:
            if name not in index:
                rows.append({"route": target, "model": name, "verdict": "build failed",
                             "reason": f"bench/zoo/build.py did not build {name} at {args.size} size"})
            else:
                rows.append(hunt(name, index[name], zoo, target, work, args.timeout, args.memory_mb))
            print(json.dumps(rows[-1], default=str), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"command": command, "size": args.size, "rows": rows}, indent=2, default=str))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
