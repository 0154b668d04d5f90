"""Build the model zoo offline: each model with its sidecar, its data and held-out data.

    python bench/zoo/build.py --out fixtures/out/zoo [--size ci|full] [--only mobilenetv2,minilm]

Writes `zoo.json` (what was built, how long it took, the aliveness proof of each model, digests).
A model whose builder sources and size are unchanged since the last build is not built again.
One model is built per subprocess, so TensorFlow and torch never share a process's memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.zoo.manifest import ALL_ZOO, CI_ZOO, LARGE_ZOO, ZOO  # noqa: E402

INDEX = "zoo.json"


def sources_digest() -> str:
    """Changes when any builder changes: the cache key of every built model."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "bench" / "zoo").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_one(name: str, out: Path, size: str) -> dict:
    """Build one model in this process (called in a fresh subprocess by `build`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.perf_counter()
    built = ALL_ZOO[name].build(out, size)
    built.seconds = round(time.perf_counter() - started, 2)
    entry = built.to_json() | {"family": ALL_ZOO[name].family, "size": size,
                               "fp32_routes": list(ALL_ZOO[name].fp32_routes), "lossy_routes": list(ALL_ZOO[name].lossy_routes)}
    entry["sha256"] = {key: file_sha(out / entry[key]) for key in ("model", "data", "holdout")}
    return entry


def build(out: Path, size: str = "ci", only: list[str] | None = None, quiet: bool = False) -> dict:
    """Build (or reuse) every model named in `only` (default: all); returns the zoo index."""
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    key = sources_digest()
    for name in only or list(ZOO):
        if name not in ALL_ZOO:
            raise SystemExit(f"unknown zoo model '{name}'; known: {', '.join(ALL_ZOO)}")
        cached = index.get(name)
        if cached and cached.get("key") == key and cached.get("size") == size and all(
            (out / cached[k]).exists() and file_sha(out / cached[k]) == cached["sha256"][k] for k in ("model", "data", "holdout")
        ):
            continue
        result = out / f".{name}.built.json"
        env = dict(os.environ, PYTHONHASHSEED="0", TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run([sys.executable, __file__, "--one", name, "--out", str(out), "--size", size,
                        "--result", str(result)], check=True, env=env, cwd=ROOT)
        entry = json.loads(result.read_text()) | {"key": key}
        result.unlink()
        index[name] = entry
        tmp = index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=2))
        tmp.replace(index_path)
        if not quiet:
            print(f"{name}: built in {entry['seconds']} s, alive: {entry['alive']}", flush=True)
    return {name: index[name] for name in only or list(ZOO)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "fixtures" / "out" / "zoo")
    parser.add_argument("--size", choices=["ci", "full"], default="ci")
    parser.add_argument("--only", default=None, help=f"comma-separated model names (default all but {','.join(LARGE_ZOO)}; CI: {','.join(CI_ZOO)})")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        entry = build_one(args.one, args.out, args.size)
        args.result.write_text(json.dumps(entry))
        return 0
    build(args.out, args.size, args.only.split(",") if args.only else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
