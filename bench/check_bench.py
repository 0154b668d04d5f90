"""Benchmark `convrepair check` against plain inference and against Polygraphy, in one run.

    python bench/check_bench.py [--samples 100] [--rounds 5] [--keep DIR]

One model pair: a synthetic 5-conv CNN on 3×64×64 inputs (large enough that inference, not
start-up, dominates) and its fp16 conversion by `convrepair convert --to onnx-fp16`. The same
5 × 100 samples go through every contender, each a fresh process measured with wait4:
  (a) plain inference: ONNX Runtime runs both models on the samples, nothing else
  (b) convrepair check --no-localize
  (c) convrepair check --localize
  (d) Polygraphy: `polygraphy run A --onnxrt --save-outputs`, then `polygraphy run B --onnxrt
      --load-outputs` (compares); (d') the same with `--onnx-outputs mark all` (layer-wise).
Prints wall times, peak RSS, and the ratios the targets are stated in:
check ≤ 1.3× (a); localization ≤ 3× (a); both faster than Polygraphy, lower peak memory layer-wise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np


def build_model(path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    layers = [(3, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)]
    nodes, inits, current = [], [], "image"
    for i, (cin, cout, stride) in enumerate(layers):
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.05, (cout,)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        nodes.append(helper.make_node("Conv", [current, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
                                      name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        current = f"relu{i}"
    inits += [
        numpy_helper.from_array(rng.normal(0, 0.1, (10, 128)).astype(np.float32), "fc.weight"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "bench_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def measure(command: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of one fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


PLAIN = textwrap.dedent(
    """
    import sys, numpy as np, onnxruntime as ort
    a, b, data, rounds, samples = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    x = np.load(data)["x"]
    sa, sb = ort.InferenceSession(a), ort.InferenceSession(b)
    for r in range(rounds):
        idx = np.sort(np.random.default_rng(r).choice(len(x), size=samples, replace=False))
        batch = x[idx]
        sa.run(None, {"image": batch}); sb.run(None, {"image": batch})
    """
)

LOADER = textwrap.dedent(
    """
    import numpy as np
    DATA, ROUNDS, SAMPLES = {data!r}, {rounds}, {samples}
    def load_data():
        x = np.load(DATA)["x"]
        for r in range(ROUNDS):
            idx = np.sort(np.random.default_rng(r).choice(len(x), size=SAMPLES, replace=False))
            yield {{"image": x[idx]}}
    """
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="keep the work directory here")
    parser.add_argument("--fixtures", type=Path, default=None, help="(unused; for make bench)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="convrepair-bench-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    convrepair = [sys.executable, "-m", "convrepair"]
    polygraphy = [str(bindir / "polygraphy")] if (bindir / "polygraphy").exists() else ["polygraphy"]

    fp32, fp16, data = work / "bench_cnn.onnx", work / "bench_cnn.onnx-fp16.onnx", work / "data.npz"
    build_model(fp32)
    subprocess.run([*convrepair, "convert", str(fp32), "--to", "onnx-fp16", "--out", str(fp16)], check=True, capture_output=True)
    pool = args.samples * args.rounds * 2
    np.savez(data, x=np.random.default_rng(1).uniform(0, 1, (pool, 3, 64, 64)).astype(np.float32))
    (work / "loader.py").write_text(LOADER.format(data=str(data), rounds=args.rounds, samples=args.samples))
    (work / "plain.py").write_text(PLAIN)

    common = ["--data", str(data), "--rounds", str(args.rounds), "--samples", str(args.samples)]
    poly_common = ["--onnxrt", "--data-loader-script", str(work / "loader.py")]
    runs = {
        "(a) plain inference, both models": [[sys.executable, str(work / "plain.py"), str(fp32), str(fp16), str(data), str(args.rounds), str(args.samples)]],
        "(b) convrepair check": [[*convrepair, "check", str(fp32), str(fp16), *common, "--no-localize"]],
        "(c) convrepair check --localize": [[*convrepair, "check", str(fp32), str(fp16), *common, "--localize"]],
        "(d) polygraphy run, outputs": [
            [*polygraphy, "run", str(fp32), *poly_common, "--save-outputs", str(work / "a.json")],
            [*polygraphy, "run", str(fp16), *poly_common, "--load-outputs", str(work / "a.json"), "--atol", "1e-2", "--rtol", "1e-2"],
        ],
        "(d') polygraphy run, mark all": [
            [*polygraphy, "run", str(fp32), *poly_common, "--onnx-outputs", "mark", "all", "--save-outputs", str(work / "a_all.json")],
            [*polygraphy, "run", str(fp16), *poly_common, "--onnx-outputs", "mark", "all", "--load-outputs", str(work / "a_all.json"), "--atol", "1e-2", "--rtol", "1e-2"],
        ],
    }
    results = {}
    for name, commands in runs.items():
        wall, peak = 0.0, 0.0
        for command in commands:
            seconds, rss, _ = measure(command, work)
            wall, peak = wall + seconds, max(peak, rss)
        results[name] = (wall, peak)
        print(f"{name:36s} {wall:7.2f} s   peak RSS {peak:7.1f} MB", flush=True)

    a, b, c = (results[k][0] for k in ("(a) plain inference, both models", "(b) convrepair check", "(c) convrepair check --localize"))
    d, d_all = results["(d) polygraphy run, outputs"][0], results["(d') polygraphy run, mark all"][0]
    mem_c, mem_d_all = results["(c) convrepair check --localize"][1], results["(d') polygraphy run, mark all"][1]
    print()
    print(f"check / plain inference              {b / a:5.2f}x   (target <= 1.3)")
    print(f"check --localize / plain inference   {c / a:5.2f}x   (target <= 3)")
    print(f"check / polygraphy                   {b / d:5.2f}x   (target < 1)")
    print(f"check --localize / polygraphy all    {c / d_all:5.2f}x   (target < 1)")
    print(f"peak RSS localize / polygraphy all   {mem_c / mem_d_all:5.2f}x   (target < 1)")
    print(f"\n{args.rounds} rounds x {args.samples} samples of 3x64x64, {os.cpu_count()} CPU cores; work dir {work}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
