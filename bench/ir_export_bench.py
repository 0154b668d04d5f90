"""tf2onnx's peak memory exporting the zoo's Keras ResNet50 to ONNX — the export localization
walks — with its per-optimizer deep copies (tf2onnx's default) and without them
(TF2ONNX_CATCH_ERRORS set, as `convrepair.ir_export` does), against loading the model alone.

    python bench/ir_export_bench.py [--size ci|full] [--repeat 3] [--model PATH.keras] [--work DIR]

Every run is a fresh interpreter running our export child (`python -m convrepair.ir_export`),
one at a time, the contenders shuffled (seeded) and each repeated; peak RSS is the child's own
(wait4's ru_maxrss). Interpreters start cold; the model file is in the page cache after the first
run (warm disk). Prints median and min–max of each contender and the ratios of the medians to
the baseline (copies, tf2onnx's default), and whether the exports are the same graph: tf2onnx's
generated names differ from run to run (`new_shape__48` / `__49`), so a graph is compared by the
multiset of its nodes (op type and attributes) and of its initializers (dtype, shape, values).
The ResNet50 has the same weights at both sizes (--size only changes the input: 64 or 224 px).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "copies (tf2onnx default)"
CONTENDERS = {BASELINE: "export", "no copies (TF2ONNX_CATCH_ERRORS)": "export-lean", "load only": "load"}
LOAD = ("import sys; from pathlib import Path; from convrepair.plugins import default_registry; "
        "from convrepair.model import model_ref; r = default_registry(); "
        "runner = r.load(model_ref(Path(sys.argv[1]), r), None, device='cpu'); print(len(runner.outputs))")


def run_once(kind: str, model: Path, work: Path) -> dict:
    """One fresh interpreter: (peak RSS in MB, seconds, sha256 of the ONNX it wrote)."""
    out = work / f"{kind}-{time.monotonic_ns()}.onnx"
    env = {k: v for k, v in os.environ.items() if k != "TF2ONNX_CATCH_ERRORS"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    if kind == "load":
        command = [sys.executable, "-c", LOAD, str(model)]
    else:
        request = work / "request.json"
        request.write_text(json.dumps({"source": str(model), "target": "onnx", "out": str(out), "options": {},
                                       "lean": kind == "export-lean", "result": str(work / "result.json")}))
        command = [sys.executable, "-P", "-m", "convrepair.ir_export", str(request)]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind}: the child exited with {os.waitstatus_to_exitcode(status)}")
    digest = None
    if kind != "load":
        result = json.loads((work / "result.json").read_text())
        if "ok" not in result:
            raise SystemExit(f"{kind}: the export failed: {result}")
        if kind == "export-lean" and not result["ok"]["lean"]:
            raise SystemExit("the lean export fell back to tf2onnx's copies: not a lean measurement")
        digest = graph_signature(out)
        for path in out.parent.glob(out.name + "*"):
            path.unlink()
    return {"peak_mb": usage.ru_maxrss / 1024, "seconds": seconds, "sha256": digest}


def graph_signature(path: Path) -> str:
    """sha256 of the graph without its names: sorted node (op type, attributes) and initializer
    (dtype, dims, values) digests."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    nodes = sorted(hashlib.sha256(node.op_type.encode() + b"".join(
        a.name.encode() + a.SerializeToString() for a in sorted(node.attribute, key=lambda a: a.name))).hexdigest()
        for node in model.graph.node)
    weights = sorted(hashlib.sha256(str((t.data_type, list(t.dims))).encode() + numpy_helper.to_array(t).tobytes()).hexdigest()
                     for t in model.graph.initializer)
    return hashlib.sha256(json.dumps([nodes, weights]).encode()).hexdigest()


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.0f} ({min(values):.0f}–{max(values):.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["ci", "full"], default="ci")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="a .keras model (default: build the zoo's ResNet50)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeat < 3:
        parser.error("--repeat must be at least 3")
    work = args.work or Path(tempfile.mkdtemp(prefix="ir-export-bench-"))
    model = args.model
    if model is None:
        subprocess.run([sys.executable, str(ROOT / "bench" / "zoo" / "build.py"), "--out", str(work / "zoo"),
                        "--size", args.size, "--only", "resnet50"], check=True, cwd=ROOT)
        model = work / "zoo" / "resnet50.keras"
    order = [name for name in CONTENDERS for _ in range(args.repeat)]
    random.Random(args.seed).shuffle(order)
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for index, name in enumerate(order, 1):
        runs[name].append(run_once(CONTENDERS[name], model.absolute(), work))
        print(f"[{index}/{len(order)}] {name}: {runs[name][-1]['peak_mb']:.0f} MB, {runs[name][-1]['seconds']:.1f} s", flush=True)
    base_peak = statistics.median(r["peak_mb"] for r in runs[BASELINE])
    base_time = statistics.median(r["seconds"] for r in runs[BASELINE])
    print(f"\nmodel: {model} ({model.stat().st_size / 1e6:.0f} MB), {args.repeat} runs each, shuffled (seed {args.seed}), "
          "fresh interpreter per run, warm page cache")
    print(f"{'contender':34} {'peak RSS MB, median (min–max)':>30} {'× baseline':>10} {'seconds':>22} {'× baseline':>10}")
    for name, results in runs.items():
        peaks, times = [r["peak_mb"] for r in results], [r["seconds"] for r in results]
        print(f"{name:34} {summary(peaks):>30} {statistics.median(peaks) / base_peak:10.2f} "
              f"{summary(times):>22} {statistics.median(times) / base_time:10.2f}")
    digests = {r["sha256"] for name in runs for r in runs[name] if r["sha256"]}
    print(f"exports: {'the same graph (nodes, attributes, weights) in every run' if len(digests) == 1 else f'{len(digests)} different graphs'}")
    export_only = {name: statistics.median(r["peak_mb"] for r in runs[name]) - statistics.median(r["peak_mb"] for r in runs["load only"])
                   for name in CONTENDERS if name != "load only"}
    print("export's own share above loading the model (median peak − load-only median): "
          + ", ".join(f"{name}: {mb:.0f} MB" for name, mb in export_only.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
