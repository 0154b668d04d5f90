"""Peak memory and time of `convrepair check` over sample count and depth, against plain inference (issue 21).

    python bench/memory_bench.py [--sizes 100,500,2000] [--repeat 3] [--keep DIR]
    python bench/memory_bench.py --zoo DIR --models mobilenetv2,resnet50 --size full \
        --sizes 100,500,2000 [--contenders plain,check,check5] [--repeat 3] [--json FILE]

Without --zoo: the 5-conv CNN of `check_bench.py` (3×64×64 inputs) against a copy of itself
(fp32, so the noise floor runs too). With --zoo: each zoo model (built by `bench/zoo/build.py`
into DIR at --size when missing) as a Keras source against its clean ONNX conversion
(`convrepair convert --to onnx`, done once), on N fresh photo crops preprocessed as the zoo does.

For each model and sample count N, every contender runs --repeat times in one shuffled order, each
a fresh process measured with wait4 (peak RSS of the largest process, the contained worker included):
  plain   a fresh process running both models over the N samples in batches of --plain-batch (32), outputs kept
          (ONNX Runtime for both in CNN mode; Keras and ONNX Runtime in zoo mode);
  check   `convrepair check --rounds 1 --samples N --no-localize`;
  check5  the same with the default 5 rounds (the same N distinct samples: the data holds N).
Prints median and min–max of wall time and peak RSS per contender, and the ratios of the medians
to plain. A run that fails (OOM kill, exit ≥ 2) is a row with its exit status, never dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from check_bench import build_model  # noqa: E402


PLAIN_ORT = textwrap.dedent(
    """
    import sys, numpy as np, onnxruntime as ort
    a, b, data = sys.argv[1], sys.argv[2], sys.argv[3]
    x = np.load(data)["x"]
    sa, sb = ort.InferenceSession(a), ort.InferenceSession(b)
    kept = [], []
    step = int(sys.argv[4])
    for start in range(0, len(x), step):
        kept[0].append(sa.run(None, {"image": x[start:start + step]})[0]); kept[1].append(sb.run(None, {"image": x[start:start + step]})[0])
    np.concatenate(kept[0]); np.concatenate(kept[1])
    """
)

PLAIN_KERAS_ORT = textwrap.dedent(
    """
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np, onnxruntime as ort, keras
    source, target, data = sys.argv[1], sys.argv[2], sys.argv[3]
    x = np.load(data)["x"]
    model = keras.saving.load_model(source, compile=False)
    session = ort.InferenceSession(target, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    kept = [], []
    step = int(sys.argv[4])
    for start in range(0, len(x), step):
        batch = x[start:start + step]
        kept[0].append(np.asarray(model(batch, training=False))); kept[1].append(session.run(None, {name: batch})[0])
    np.concatenate(kept[0]); np.concatenate(kept[1])
    """
)

ZOO_DATA = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, sys.argv[1])
    from bench.zoo.images import photo_crops
    from bench.zoo.keras_apps import APPLICATIONS, preprocess
    name, side, count, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    np.savez(out, x=preprocess(photo_crops(count, side, seed=1000 + count), APPLICATIONS[name][1]))
    """
)


def measure(command: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB of the largest process, exit status) of one fresh process; a
    failure is returned, not raised, so the table shows it."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        print(f"  ! {' '.join(command[:6])} … exit {code}: {proc.stderr.read().decode()[-600:]}", file=sys.stderr, flush=True)
    return wall, usage.ru_maxrss / 1024.0, code


def cnn_pair(work: Path) -> tuple[Path, Path, str]:
    build_model(work / "cnn.onnx")
    shutil.copy(work / "cnn.onnx", work / "copy.onnx")
    return work / "cnn.onnx", work / "copy.onnx", PLAIN_ORT


def cnn_data(work: Path, n: int) -> Path:
    data = work / f"cnn_x{n}.npz"
    if not data.exists():
        np.savez(data, x=np.random.default_rng(n).uniform(0, 1, (n, 3, 64, 64)).astype(np.float32))
    return data


def zoo_pair(zoo: Path, name: str, size: str) -> tuple[Path, Path, str]:
    """The zoo's Keras model (built when missing: a build takes ~10 GB for ResNet50 at 224 px, so a
    model already there is used as it is, even when other builders' code changed since) and its
    clean ONNX conversion (converted again only when it is not of this very source file)."""
    from bench.zoo.build import build, file_sha

    source = zoo / f"{name}.keras"
    if not source.exists():
        source = zoo / build(zoo, size, [name])[name]["model"]
    target = zoo / f"{name}.onnx"
    sidecar = target.parent / f"{target.name}.convrepair.json"
    made_from = json.loads(sidecar.read_text())["source"]["sha256"] if sidecar.exists() else None
    if not target.exists() or made_from != file_sha(source):
        subprocess.run([sys.executable, "-m", "convrepair", "convert", str(source), "--to", "onnx", "--out", str(target)],
                       check=True, capture_output=True, cwd=ROOT)
    return source, target, PLAIN_KERAS_ORT


def zoo_data(zoo: Path, name: str, size: str, n: int) -> Path:
    from bench.zoo.manifest import ZOO

    data = zoo / f"{name}_{size}_x{n}.npz"
    if not data.exists():
        subprocess.run([sys.executable, "-c", ZOO_DATA, str(ROOT), name, str(ZOO[name].sizes[size].image), str(n), str(data)],
                       check=True, cwd=ROOT)
    return data


def contenders(kinds: list[str], source: Path, target: Path, data: Path, n: int, plain: str, work: Path,
               batch: int) -> dict[str, list[str]]:
    check = [sys.executable, "-m", "convrepair", "check", str(source), str(target), "--data", str(data), "--samples", str(n),
             "--no-localize", "--json", str(work / "check.json")]
    every = {"plain": [sys.executable, "-c", plain, str(source), str(target), str(data), str(batch)],
             "check": [*check, "--rounds", "1"],
             "check5": check}
    return {kind: every[kind] for kind in kinds}


def cell(runs: dict[str, list[str]], repeat: int, work: Path, seed: int) -> dict[str, list[tuple[float, float, int]]]:
    """Every contender `repeat` times in one shuffled order."""
    order = [kind for kind in runs for _ in range(repeat)]
    random.Random(seed).shuffle(order)
    results: dict[str, list[tuple[float, float, int]]] = {kind: [] for kind in runs}
    for kind in order:
        results[kind].append(measure(runs[kind], work))
    return results


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}–{max(values):.1f})"


def report(label: str, n: int, results: dict[str, list[tuple[float, float, int]]]) -> list[dict]:
    rows = []
    plain = results.get("plain")
    plain_s = statistics.median([r[0] for r in plain]) if plain else None
    plain_mb = statistics.median([r[1] for r in plain]) if plain else None
    for kind, runs in results.items():
        failed = [r[2] for r in runs if r[2] not in (0, 1)]
        seconds, megabytes = [r[0] for r in runs], [r[1] for r in runs]
        ratio_s = statistics.median(seconds) / plain_s if plain_s else None
        ratio_mb = statistics.median(megabytes) / plain_mb if plain_mb else None
        print(f"{label:>12} {n:>6} {kind:>7}  s {summary(seconds)}  MB {summary(megabytes)}  "
              f"time × {ratio_s:5.2f}  RSS × {ratio_mb:5.2f}" + (f"  FAILED exits {failed}" if failed else ""), flush=True)
        rows.append({"model": label, "samples": n, "contender": kind, "seconds": seconds, "peak_mb": megabytes,
                     "exits": [r[2] for r in runs], "time_ratio": ratio_s, "rss_ratio": ratio_mb})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,2000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--contenders", default="plain,check")
    parser.add_argument("--plain-batch", type=int, default=32,
                        help="plain inference's batch (Keras ResNet50 at 224 px: ~150 MB a sample)")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder (built there when missing); CNN mode without")
    parser.add_argument("--models", default="mobilenetv2,resnet50,densenet121,inceptionv3")
    parser.add_argument("--size", choices=["ci", "full"], default="full")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work directory here")
    parser.add_argument("--json", type=Path, default=None, help="write every run here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="convrepair-memory-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    kinds = args.contenders.split(",")
    sizes = [int(v) for v in args.sizes.split(",")]
    rows: list[dict] = []
    print(f"{'model':>12} {'N':>6} {'run':>7}  median (min–max) of {args.repeat}; plain in batches of {args.plain_batch}; "
          f"{os.cpu_count()} CPU cores", flush=True)
    try:
        pairs = ([(name, *zoo_pair(args.zoo, name, args.size)) for name in args.models.split(",")] if args.zoo
                 else [("cnn64", *cnn_pair(work))])
        for label, source, target, plain in pairs:
            for n in sizes:
                data = zoo_data(args.zoo, label, args.size, n) if args.zoo else cnn_data(work, n)
                runs = contenders(kinds, source, target, data, n, plain, work, args.plain_batch)
                rows += report(label, n, cell(runs, args.repeat, work, seed=n))
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
