"""The layer walk: every aligned checkpoint of both models compared in one pass over the samples,
the first divergent layer picked (fusion boundaries and small first jumps told apart), and the
shadow run that confirms it in isolation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from convrepair import lean_onnx, memory
from convrepair.localize.capture import capture, probe, segment, sweep
from convrepair.localize.graph import GraphView
from convrepair.localize.tensors import RunningDiff, TensorDiff, compare_tensors
from convrepair.events import track

SWEEP_BATCH = 8  # samples whose activations (every layer of both models) are held at once
SPAN_BYTES = 256 << 20  # … at most this many bytes of them, for a large (lean) model: one sample where it is more


@dataclass
class LayerRow:
    source_layer: str
    target_layer: str
    kind: str
    diff: TensorDiff | None
    status: str  # "ok" | "diverged" | "carried" | "fused" | "incomparable"

    def to_json(self) -> dict[str, Any]:
        out = {"source_layer": self.source_layer, "target_layer": self.target_layer, "kind": self.kind, "status": self.status}
        metrics = self.diff.to_json() if self.diff else {"max_abs": None, "max_rel": None, "cosine": None, "rel_l2": None}
        return out | metrics



def walk(pairs, view: GraphView, s_model, t_model, s_feeds, t_feeds, threshold) -> tuple[list[LayerRow], int | None]:
    """Compare every aligned output in one pass over the samples, SWEEP_BATCH samples at a time:
    memory holds one batch of activations, and each model runs once.

    A checkpoint that diverges while the next one that depends on it agrees again is a fusion
    boundary (the target computes that layer together with the next, e.g. TFLite folds BatchNorm
    into Conv), not a fault: it is marked "fused" and the walk goes on.
    """
    running = [RunningDiff() for _ in pairs]
    s_names = list(dict.fromkeys(s.tensor for s, _ in pairs))
    t_names = list(dict.fromkeys(t.tensor for _, t in pairs))
    total = len(next(iter(s_feeds.values()))) if s_feeds else 0
    lean = lean_onnx.home_of(s_model) is not None or lean_onnx.home_of(t_model) is not None
    batches = lockstep(probe(s_model, s_names, s_feeds), probe(t_model, t_names, t_feeds), total, lean)
    for batch in track(batches, f"localizing {len(pairs)} layers on {total} samples",
                       total=-(-total // (1 if lean else SWEEP_BATCH))):
        s_values, t_values = batch
        batch.clear()  # one batch of activations at a time, never two (track holds its last item)
        for diff, (s, t) in zip(running, pairs):
            diff.add(s_values[s.tensor], t_values[t.tensor])
        del s_values, t_values
    diffs = [diff.result() for diff in running]
    statuses, first = layer_statuses(view, [s for s, _ in pairs], diffs, threshold)
    rows = [LayerRow(s_layer.node.name, t_layer.node.name, s_layer.kind, diff, status)
            for (s_layer, t_layer), diff, status in zip(pairs, diffs, statuses)]
    return rows, first


def layer_statuses(view: GraphView, layers, diffs, threshold: float) -> tuple[list[str], int | None]:
    """Each checkpoint's status and the first that diverged: ok, fused (diverged, and the next
    checkpoint, which depends on it, agrees again), diverged, then carried or incomparable. A
    pair whose shapes no axis order reconciles (`None`) has diverged too (a dropped Pad, a
    changed stride). `layers`: the source's checkpoints in order, one per diff."""
    diverged = [d is None or d.rel_l2 > threshold for d in diffs]
    statuses: list[str] = []
    first: int | None = None
    for i, diff in enumerate(diffs):
        if not diverged[i]:
            status = "ok"
        elif (first is None and diff is not None and i + 1 < len(diffs) and not diverged[i + 1]
              and _feeds_next(view, layers, i)):
            status = "fused"
        elif first is None:
            status, first = "diverged", i
        else:
            status = "carried" if diff is not None else "incomparable"
        statuses.append(status)
    return statuses, first


def lockstep(s_run, t_run, total: int, lean: bool, budget: int | None = None):
    """[source values, target values] over the samples, a span at a time (a list the caller empties:
    nothing then keeps a span's values alive while the next one runs). Every checkpoint of both
    models is held for one span, so its size follows memory: a lean (large) model's first span is
    one sample, which measures the activations' bytes per sample, and later spans hold as many
    samples as `budget` allows (issue 21: BERT-large's checkpoints are ~250 MB per 128-token
    sample and model, 4 GB for eight samples of both); a small model's are SWEEP_BATCH samples."""
    step, start = (1 if lean else SWEEP_BATCH), 0
    while start < total:
        stop = min(start + step, total)
        s_values, t_values = s_run(start, stop), t_run(start, stop)
        if lean and start == 0:
            per_sample = sum(v.nbytes for part in (s_values, t_values) for v in part.values()) // max(stop - start, 1)
            room = min(memory.budget(None), SPAN_BYTES) if budget is None else budget
            step = max(1, min(SWEEP_BATCH, room // max(per_sample, 1)))
        batch = [s_values, t_values]
        del s_values, t_values
        yield batch
        start = stop


def _feeds_next(view: GraphView, layers, index: int) -> bool:
    """Does the next checkpoint depend on this one (a folded BatchNorm on its Conv)? Only then can
    agreeing again there mean fusion; a sibling that agrees (the K projection beside a faulty Q)
    says nothing about this layer."""
    return view.reaches(layers[index].tensor, layers[index + 1].node)


def first_jump(rows: list[LayerRow], factor: float = 10.0, floor: float = 1e-6) -> int | None:
    """Below the divergence threshold, the layer where the error first jumps: rel_l2 more than
    `factor` times anything before it. Small faults (GELU erf → tanh) and rounding start there."""
    worst = floor
    for index, row in enumerate(rows):
        if row.diff is None or row.status == "fused":
            continue
        if row.diff.rel_l2 > factor * worst:
            row.status = "diverged"
            for later in rows[index + 1 :]:
                if later.diff is not None and later.status == "ok" and later.diff.rel_l2 > worst:
                    later.status = "carried"
            return index
        worst = max(worst, row.diff.rel_l2)
    return None


def shadow_run(pairs, index, s_model, t_model, s_feeds, t_feeds, end_to_end: float | None) -> dict[str, Any] | None:
    """Feed the target's segment the source's input to it; a fault diverges even so.

    Confirmed when the segment alone accounts for at least half of the divergence seen end to end
    at that layer; a layer that only carries an earlier error agrees in isolation. Streamed like
    the walk, SWEEP_BATCH samples at a time (issue 21: two early ResNet50 activations of 128
    samples at 224 px are 800 MB); the target's own input is run on the first batch only, to learn
    its layout.
    """
    if index == 0:
        return {"confirmed": None, "reason": "first layer: its input is the model input (see the input check)"}
    s_prev, t_prev = pairs[index - 1]
    s_layer, t_layer = pairs[index]
    isolated_run = segment(t_model, t_prev.tensor, t_layer.tensor)
    if isolated_run is None:
        return {"confirmed": None, "reason": "the target segment depends on more than its input (not extractable)"}
    running, permutation = RunningDiff(), None
    for start, s_values in enumerate(sweep(s_model, list(dict.fromkeys([s_prev.tensor, s_layer.tensor])), s_feeds, SWEEP_BATCH)):
        s_input = s_values[s_prev.tensor]
        if start == 0:
            first = {k: v[:SWEEP_BATCH] for k, v in t_feeds.items()}
            t_shape_probe = capture(t_model, [t_prev.tensor], first)[t_prev.tensor]
            if s_input.shape != t_shape_probe.shape:
                moved = compare_tensors(s_input, t_shape_probe)
                if moved is None or moved.permutation is None:
                    return {"confirmed": None, "reason": "cannot map the source's input onto the target's layout"}
                permutation = moved.permutation
        isolated = isolated_run(np.transpose(s_input, permutation) if permutation else s_input)
        if isolated is None:
            return {"confirmed": None, "reason": "the target segment depends on more than its input (not extractable)"}
        running.add(s_values[s_layer.tensor], isolated)
    diff = running.result()
    if diff is None:
        return {"confirmed": None, "reason": "isolated output not comparable"}
    reference = end_to_end if end_to_end is not None else 0.0
    confirmed = diff.rel_l2 > 1e-6 and diff.rel_l2 >= 0.5 * reference
    return {"confirmed": confirmed, "metric": diff.to_json(), "end_to_end_rel_l2": end_to_end,
            "input_from": s_prev.node.name, "segment": f"{t_prev.node.name} → {t_layer.node.name}"}
