"""What a repair costs: the model's size, its inference time and its precision mix, before and
after. A repair that keeps layers in fp32 buys exactness with bytes and milliseconds; the person
who approves it sees the price on the terminal, in the JSON and on the decision card."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

QUANTIZED_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear",
                 "QuantizeLinear", "DequantizeLinear")


def size_of(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def precision_mix(path: Path) -> dict[str, Any] | None:
    """Parameters by element type and quantized ops, for an ONNX model (None for other formats)."""
    if Path(path).suffix != ".onnx":
        return None
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    params: dict[str, int] = {}
    for init in model.graph.initializer:
        kind = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name if init.data_type else "unknown"
        params[kind] = params.get(kind, 0) + int(np.prod(init.dims)) if init.dims else params.get(kind, 0) + 1
    ops = [n.op_type for n in model.graph.node]
    return {"parameters": params, "quantized_ops": sum(op in QUANTIZED_OPS for op in ops),
            "casts": ops.count("Cast"), "nodes": len(ops)}


def latency_ms(runner, dataset, indices: np.ndarray, repeats: int = 5) -> float | None:
    """Median time of one batch (up to 64 held-out samples) through the model's own runner."""
    from convrepair.data import feeds_for

    if not len(indices):
        return None
    subset = dataset.take(np.asarray(indices[:64]))
    feeds = feeds_for(runner.inputs, subset, 0, len(subset))
    runner.run(feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.run(feeds)
        times.append((time.perf_counter() - t0) * 1000)
    return round(float(np.median(times)), 3)


def repair_cost(job, target, repaired_path: Path | None, dataset, indices: np.ndarray,
                kept_fp32: list[str] | None = None) -> dict[str, Any] | None:
    """Size, latency (batch of up to 64, median of 5) and precision mix of the target and the
    repaired model; None when there is no repaired model."""
    if repaired_path is None:
        return None
    repaired = job.model(repaired_path)
    before = {"bytes": size_of(target.ref.path), "latency_ms": latency_ms(job.runner(target), dataset, indices),
              "precision": precision_mix(target.ref.path)}
    after = {"bytes": size_of(repaired_path), "latency_ms": latency_ms(job.runner(repaired), dataset, indices),
             "precision": precision_mix(repaired_path)}
    out = {"before": before, "after": after, "bytes_change": after["bytes"] - before["bytes"],
           "size_ratio": round(after["bytes"] / max(before["bytes"], 1), 4),
           "latency_ratio": round(after["latency_ms"] / before["latency_ms"], 3)
           if before["latency_ms"] and after["latency_ms"] else None,
           "layers_kept_fp32": list(kept_fp32 or []),
           "latency_batch": int(min(64, len(indices)))}
    return out
