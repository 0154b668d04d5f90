"""Peak memory of `convrepair check` over the number of samples, against plain inference (issue 21).

    python bench/memory_bench.py [--sizes 100,500,2000] [--keep DIR]

The 5-conv CNN of `check_bench.py` (3×64×64 inputs) against a copy of itself (fp32, so the noise
floor runs too). For each sample count N, fresh processes measured with wait4 (peak RSS of the
largest process, the contained worker included):
  (a) plain inference: ONNX Runtime runs both models on the N samples in batches of 32;
  (b) `convrepair check --rounds 1 --samples N --no-localize`.
Prints wall time, peak RSS and the RSS ratio (b)/(a) per N: memory-sized batches keep (b) flat in N
apart from the data and the outputs themselves, which both hold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_bench import build_model, measure  # noqa: E402

PLAIN = textwrap.dedent(
    """
    import sys, numpy as np, onnxruntime as ort
    a, b, data = sys.argv[1], sys.argv[2], sys.argv[3]
    x = np.load(data)["x"]
    sa, sb = ort.InferenceSession(a), ort.InferenceSession(b)
    for start in range(0, len(x), 32):
        sa.run(None, {"image": x[start:start + 32]}); sb.run(None, {"image": x[start:start + 32]})
    """
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,2000")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work directory here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="convrepair-memory-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        build_model(work / "cnn.onnx")
        shutil.copy(work / "cnn.onnx", work / "copy.onnx")
        print(f"{'samples':>8} {'plain s':>8} {'plain MB':>9} {'check s':>8} {'check MB':>9} {'RSS ×':>6}")
        for n in (int(v) for v in args.sizes.split(",")):
            data = work / f"x{n}.npz"
            np.savez(data, x=np.random.default_rng(n).uniform(0, 1, (n, 3, 64, 64)).astype(np.float32))
            plain_s, plain_mb, _ = measure([sys.executable, "-c", PLAIN, "cnn.onnx", "copy.onnx", data.name], work)
            check_s, check_mb, _ = measure([sys.executable, "-m", "convrepair", "check", "cnn.onnx", "copy.onnx", "--data",
                                            data.name, "--rounds", "1", "--samples", str(n), "--no-localize",
                                            "--json", "check.json"], work)
            print(f"{n:>8} {plain_s:>8.1f} {plain_mb:>9.0f} {check_s:>8.1f} {check_mb:>9.0f} {check_mb / plain_mb:>6.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
