"""The PSO patch attempt of `convrepair repair`: data, localized weights, swarm, patched model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from convrepair.data import Dataset, batches, feeds_for
from convrepair.repair.patch import apply_patch, last_dense_layer
from convrepair.repair.pso import OPTIMISERS, SearchConfig, SwarmEvaluator
from convrepair.repair.restore import Patch, digest
from convrepair.repair.select import RepairData, localize_weights

MAX_WEIGHTS = 20  # Arachne patches a handful of weights, not a layer


def labels_of(runner, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    out = []
    for start, stop in batches(len(dataset), batch_size):
        values = runner.run(feeds_for(runner.inputs, dataset, start, stop))
        out.append(next(iter(values.values())).argmax(axis=1))
    return np.concatenate(out)


def running_capture(model, names: list[str], feeds: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, np.ndarray]:
    """`names` as the model computes them when it runs, as float32: ONNX Runtime's graph
    optimizations on, as in the runner, in `labels_of`'s batches. Run op by op (the localization
    capture), a static QDQ int8 model is a different model: the runner fuses it into integer
    kernels (QLinearConv, QGemm, QLinearMul) whose outputs differ — on this machine by up to 2.3
    in the digits CNN's logits, 13 labels of 719 (issue 18) — and a patch searched on the op-by-op
    values fixed flips that the running model does not have. Dynamic quantization's scales depend
    on the batch, hence the same batches."""
    from convrepair.localize.capture import probe

    run = probe(model, names, feeds, optimize=True)
    total = len(next(iter(feeds.values()))) if feeds else 0
    parts = [run(start, stop) for start, stop in batches(total, batch_size)]
    return {name: np.concatenate([part[name] for part in parts]) for name in names}


def search_patch(model, source_weight: np.ndarray | None, dataset: Dataset, layouts: list[str], wanted: np.ndarray,
                 current: np.ndarray, config: SearchConfig, optimiser: str = "pso",
                 negatives: np.ndarray | None = None) -> tuple[Any, Patch, dict[str, Any]]:
    """Search the patch on `dataset`; return (patched model, Patch, search statistics).

    `negatives` defaults to every sample where `current` differs from `wanted` (a conversion);
    regression repair passes only the regressions.
    """
    from convrepair.localize import onnx_feeds
    from convrepair.localize.graph import GraphView

    view = GraphView(model)
    layer = last_dense_layer(view)
    feeds = onnx_feeds(model, layouts, dataset)
    cache = running_capture(model, [layer.input_tensor, layer.logits_tensor], feeds)
    inputs = layer.float_inputs(cache[layer.input_tensor]).reshape(len(dataset), -1)
    base = layer.float_logits(cache[layer.logits_tensor]).reshape(len(dataset), -1)
    # the cache must describe the model whose labels were given: say how far it does not
    mismatch = int((layer.output_logits(base).argmax(axis=1) != current).sum())
    negatives = np.nonzero(current != wanted)[0] if negatives is None else np.asarray(negatives)
    agreeing = np.nonzero(current == wanted)[0]
    rng = np.random.default_rng(config.seed)
    # Positives guard what must not break; evaluating them is cheap over the cache, so use many.
    positives = np.sort(rng.choice(agreeing, size=min(len(agreeing), 2000), replace=False))
    data = RepairData(inputs, base, wanted, negatives, positives)
    history = source_weight if source_weight is not None and source_weight.shape == layer.weight.shape else None
    positions = localize_weights(data, layer.weight, history, top_n=max(MAX_WEIGHTS, layer.weight.size // 20), limit=MAX_WEIGHTS)
    original = np.array([layer.weight[r, c] for r, c in positions], np.float32)
    quantizer = None
    if layer.quantization is not None:
        scale, zero, qmin, qmax = layer.quantization
        quantizer = (np.array([scale[r, c] for r, c in positions]), np.array([zero[r, c] for r, c in positions]), qmin, qmax)
    evaluator = SwarmEvaluator(inputs, base, wanted, negatives, positives, positions, original, config.alpha, config.device, quantizer,
                               layer.logits_quant)
    stats = (float(layer.weight.mean()), float(layer.weight.std()), float(layer.weight.min()), float(layer.weight.max()))
    started = time.perf_counter()
    result = OPTIMISERS[optimiser](evaluator.fitness, original, stats, config)
    import torch

    with torch.no_grad():
        patched = evaluator.logits(torch.as_tensor(result.values[None], dtype=torch.float32, device=evaluator.device))[0]
        labels = patched.argmax(dim=-1).cpu().numpy()
    repaired = float((labels[negatives] == wanted[negatives]).mean()) if len(negatives) else 1.0
    broken = float((labels[positives] != wanted[positives]).mean()) if len(positives) else 0.0
    new_model = apply_patch(model, layer, positions, result.values)
    patch = Patch(
        kind="pso_patch",
        location=f"{layer.node.name}:{layer.weight_name}",
        parameters=len(positions),
        detail=f"{optimiser.upper()} changed {len(positions)} weights of {layer.node.name}"
               + (" (kept int8 with the layer's scale and zero point)" if quantizer else ""),
        before=digest(original),
        after=digest(result.values),
        extra={"weights": [{"row": int(r), "column": int(c), "before": float(b), "after": float(a)}
                           for (r, c), b, a in zip(positions, original, result.values)]},
    )
    statistics = {
        "optimiser": optimiser,
        "device": evaluator.device,
        "negatives": int(len(negatives)),
        "positives": int(len(positives)),
        "repair_rate_search": repaired,
        "break_rate_search": broken,
        "iterations": result.iterations,
        "evaluations": result.evaluations,
        "budget_seconds": config.budget_seconds,
        "stopped_by_budget": bool(result.seconds > config.budget_seconds),
        "evaluations_per_second": result.evaluations / max(time.perf_counter() - started, 1e-9),
        "history": "weight difference to the source" if history is not None else "none (Pareto front)",
        "fitness": result.fitness,
        "cache_label_mismatch": mismatch,
    }
    return new_model, patch, statistics
