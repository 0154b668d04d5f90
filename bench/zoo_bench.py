"""The zoo benchmark: cost of check / localize / repair / convert on real models, and the fault matrix.

    python bench/zoo_bench.py [--size ci|full] [--only mobilenetv2,resnet18,minilm] [--faults all|none|weights,...]
    python bench/zoo_bench.py --tables run1.json run2.json     # print the tables of earlier runs, merged

Every measured command runs as its own subprocess (the real CLI); its wall time and peak RSS
(ru_maxrss from wait4, which covers the contained worker it forks) are taken in this one run and
reported as ratios to plain inference of both models on the same samples (load + infer, the
frameworks' own runners). `convert` is measured against the framework exporter alone.
The fault matrix injects FetaFix's fault classes (fixtures/faults.py ZOO_FAULTS) into each model's
fp32 ONNX conversion and records, per fault: detected, localized to the injected node, typed right,
repaired (the repaired model checked `equivalent` on held-out samples the repair never saw).
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

from bench.zoo.manifest import ZOO  # noqa: E402

PY = sys.executable
CWD = tempfile.gettempdir()  # an empty scratch folder once main() runs: `python -m` imports from its cwd
HOLDOUT_CHECK = False  # --holdout-check: also check each repaired model on the zoo's separate holdout file


@dataclass
class Run:
    seconds: float
    peak_mb: float
    code: int
    json: dict | None = None


def measure(args: list, json_out: Path | None = None, timeout: float = 1800) -> Run:
    """Run a subprocess; wall time and its peak RSS (with the children it waited for)."""
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


def plain_inference(source: str, target: str, data: str) -> None:
    """The baseline: load both models with their frameworks' runners, infer every sample once."""
    import numpy as np

    from convrepair.data import batches, feeds_for, load_npz
    from convrepair.model import model_ref
    from convrepair.plugins import default_registry
    from convrepair.sidecar import read_sidecar

    registry = default_registry()
    for path in (source, target):
        ref = model_ref(Path(path), registry)
        with registry.load(ref, read_sidecar(ref.path), device="cpu") as runner:
            dataset = load_npz(Path(data), runner.inputs)
            for start, stop in batches(len(dataset), 64):
                runner.run(feeds_for(runner.inputs, dataset, start, stop))
    del np


def exporter_alone(source: str, out: str) -> None:
    """The framework exporter with nothing of ours around it: tf2onnx or torch.onnx (dynamo)."""
    if source.endswith(".keras"):
        import keras
        import tensorflow as tf
        import tf2onnx

        model = keras.saving.load_model(source, safe_mode=True)
        specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
        fn = tf.function(lambda x: model(x, training=False), autograph=False)
        tf2onnx.convert.from_function(fn, input_signature=specs, opset=17, output_path=out)
    else:
        import torch

        program = torch.export.load(source)
        example = tuple(torch.zeros([2 if not str(d).isdigit() else int(d) for d in n.meta["val"].shape],
                                    dtype=n.meta["val"].dtype) for n in program.graph.nodes
                        if n.op == "placeholder" and n.name in program.graph_signature.user_inputs)
        torch.onnx.export(program, example, dynamo=True, opset_version=18).save(out)


def cost_rows(name: str, entry: dict, zoo: Path, work: Path, convert_only: bool = False) -> tuple[list[dict], dict[str, Path]]:
    """Per route: check, check --localize, peak RSS, as ratios to plain inference; plus convert.
    With `convert_only`, only the ONNX conversion the fault matrix needs."""
    model = ZOO[name]
    source, data = zoo / entry["model"], zoo / entry["data"]
    n = str(entry.get("samples") or 1000)
    rows, converted = [], {}
    for route in ["onnx"] if convert_only else [*model.fp32_routes, *model.lossy_routes]:
        base = converted.get("onnx") if route.startswith("onnx-") or route == "torch" else source
        out_dir = work / route
        conv = measure(cli("convert", base, "--to", route, "--out-dir", out_dir, "--force", "--json", work / f"c-{route}.json"),
                       work / f"c-{route}.json")
        if conv.code != 0 or not conv.json:
            rows.append({"model": name, "route": route, "error": "conversion failed"})
            continue
        target = Path(conv.json["conversions"][0]["output"]["path"])
        converted[route] = target
        if convert_only:
            return [], converted
        plain = measure([PY, __file__, "--infer", source, target, data])
        check = measure(cli("check", source, target, "--data", data, "--rounds", "1", "--samples", n, "--no-localize",
                            "--json", work / "k.json"), work / "k.json")
        local = measure(cli("check", source, target, "--data", data, "--rounds", "1", "--samples", n, "--localize",
                            "--json", work / "l.json"), work / "l.json")
        rows.append({
            "model": name, "route": route, "verdict": (check.json or {}).get("verdict"),
            "plain_s": plain.seconds, "plain_mb": plain.peak_mb,
            "check_s": check.seconds, "check_x": _ratio(check.seconds, plain.seconds),
            "check_mb_x": _ratio(check.peak_mb, plain.peak_mb),
            "localize_s": local.seconds, "localize_x": _ratio(local.seconds, plain.seconds),
            "localize_mb_x": _ratio(local.peak_mb, plain.peak_mb),
            "convert_s": conv.seconds, "convert_mb": conv.peak_mb,
        })
        if route == "onnx":
            alone = measure([PY, __file__, "--export", source, work / "alone.onnx"])
            rows[-1] |= {"exporter_mb": alone.peak_mb, "convert_mb_x": _ratio(conv.peak_mb, alone.peak_mb)}
            repair = repair_run(source, target, "weights", zoo / entry["data"], zoo / entry["holdout"], work)
            rows[-1] |= {"repair_s": repair["seconds"], "repair_x": _ratio(repair["seconds"], plain.seconds),
                         "repair_mb_x": _ratio(repair["peak_mb"], plain.peak_mb), "repair_verdict": repair["verdict"]}
        print(f"  {name} {route}: {rows[-1]}", flush=True)
    return rows, converted


def repair_run(source: Path, onnx: Path, fault: str, data: Path, holdout: Path, work: Path) -> dict:
    """Inject one fault class into the fp32 ONNX, repair it, judge the repair on held-out samples."""
    from faults import inject_zoo_fault

    faulty = work / f"faulty-{fault}.onnx"
    try:
        node, expected = inject_zoo_fault(onnx, faulty, fault)
    except (KeyError, IndexError, StopIteration) as exc:
        return {"fault": fault, "applies": False, "why": str(exc)[:80]}
    repaired = work / f"repaired-{fault}.onnx"
    repaired.unlink(missing_ok=True)
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


def _ratio(a, b):
    return round(a / b, 2) if a and b else None


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def print_tables(cost: list[dict], matrix: list[dict], size: str) -> dict:
    cost_columns = ["model", "route", "verdict", "plain_s", "plain_mb", "check_x", "check_mb_x", "localize_x",
                    "localize_mb_x", "repair_x", "repair_mb_x", "repair_verdict", "convert_mb", "exporter_mb", "convert_mb_x"]
    fault_columns = ["model", "fault", "node", "detected", "localized", "typed", "type", "repaired", "held_out", "seconds"]
    applied = [r for r in matrix if r.get("applies")]
    summary = {k: f"{sum(bool(r[k]) for r in applied)}/{len(applied)}" for k in ("detected", "localized", "typed", "repaired")}
    print(f"\n## Zoo cost ({size} sizes; ratios to plain inference of both models on the same samples)\n")
    print(markdown(cost, cost_columns))
    print(f"\n## Fault matrix ({size} sizes)\n")
    print(markdown(applied, fault_columns))
    skipped = [f"{r['model']}/{r['fault']} ({r.get('why')})" for r in matrix if not r.get("applies")]
    print(f"\nsummary: {summary}; not applicable: {skipped}")
    return summary


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
    parser.add_argument("--infer", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--export", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.infer:
        plain_inference(*args.infer)
        return 0
    if args.export:
        exporter_alone(*args.export)
        return 0
    from bench.zoo.build import build
    from faults import ZOO_FAULTS

    global HOLDOUT_CHECK, CWD
    HOLDOUT_CHECK = args.holdout_check
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
            entry = index[name] | {"samples": ZOO[name].sizes[args.size].samples}
            rows, converted = cost_rows(name, entry, zoo, work, args.no_cost)
            cost += rows
            for fault in faults:
                if "onnx" not in converted:
                    break
                row = {"model": name} | repair_run(zoo / entry["model"], converted["onnx"], fault,
                                                    zoo / entry["data"], zoo / entry["holdout"], work)
                matrix.append(row)
                print(f"  {name} {fault}: {row}", flush=True)
            write_json(args.json, {"size": args.size, "partial": True, "cost": cost, "faults": matrix})
    summary = print_tables(cost, matrix, args.size)
    payload = {"size": args.size, "models": {n: index[n] for n in names}, "cost": cost, "faults": matrix, "summary": summary}
    write_json(args.json, payload)
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
