"""Occlusion lens: which input region drives a prediction, and a disagreement (Zeiler & Fergus).

A patch of the input is set to the range's low value (black) at every position of a sliding
window; the map records how much the probability of the model's own predicted class drops. Maps
are made for every sample whose label changed between the models (and a few that did not), for
each model, with their difference to the source's map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from convrepair.data import Dataset
from convrepair.lenses.scores import LensUnavailable, as_log_probabilities, predict_scores

_SPATIAL_AXES = {"NHWC": (1, 2), "NCHW": (2, 3)}


@dataclass
class OcclusionSample:
    index: int  # in the data file
    changed: bool
    labels: dict[str, int]
    image: list[list[float]]  # channel mean of the input, for display
    maps: dict[str, list[list[float]]]  # drop of each model's predicted-class probability
    difference: dict[str, list[list[float]]]  # model's map minus the source's


@dataclass
class Occlusion:
    patch: int
    stride: int
    fill: float
    samples: list[OcclusionSample] = field(default_factory=list)


def spatial_axes(layout: str, ndim: int) -> tuple[int, int]:
    if layout in _SPATIAL_AXES and ndim == 4:
        return _SPATIAL_AXES[layout]
    if ndim == 3:
        return (1, 2)
    raise LensUnavailable(f"occlusion needs image inputs (N,H,W[,C] or N,C,H,W); this input is {ndim}-D, layout {layout}")


def default_patch(size: int) -> tuple[int, int]:
    """(patch, stride): 2×2 sliding by 1 on small inputs; a 14×14 grid of patches on larger ones."""
    if size <= 16:
        return min(2, size), 1
    patch = math.ceil(size / 14)
    return patch, patch


def occlusion_maps(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, axes: tuple[int, int], patch: int,
                   stride: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """(maps (N, rows, cols), predicted class (N,)) for log-probability `predict` over batch `x`."""
    height, width = x.shape[axes[0]], x.shape[axes[1]]
    rows, cols = range(0, height - patch + 1, stride), range(0, width - patch + 1, stride)
    base = np.exp(predict(x))
    predicted = base.argmax(axis=1)
    positions = [(i, j) for i in rows for j in cols]
    per_chunk = max(1, 256 // len(x))  # bounded memory on large images
    taken = []
    for start in range(0, len(positions), per_chunk):
        variants = []
        for i, j in positions[start : start + per_chunk]:
            occluded = x.copy()
            window = [slice(None)] * x.ndim
            window[axes[0]], window[axes[1]] = slice(i, i + patch), slice(j, j + patch)
            occluded[tuple(window)] = fill
            variants.append(occluded)
        probs = np.exp(predict(np.concatenate(variants))).reshape(len(variants), len(x), -1)
        taken.append(probs[:, np.arange(len(x)), predicted])  # (positions, N)
    drop = base[np.arange(len(x)), predicted][None, :] - np.concatenate(taken)
    return drop.T.reshape(len(x), len(rows), len(cols)), predicted


def _grid(array: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in array]


def run(ctx) -> Occlusion:
    config = ctx.config
    layout = ctx.dataset.layouts[0]
    x_all = ctx.dataset.inputs[0]
    axes = spatial_axes(layout, x_all.ndim)
    size = min(x_all.shape[axes[0]], x_all.shape[axes[1]])
    patch, stride = (config.patch, config.stride or 1) if config.patch else default_patch(size)
    if not 1 <= patch <= size or stride < 1:
        raise LensUnavailable(f"an occlusion patch of {patch} (stride {stride}) does not fit a {size}-pixel image")
    labels = {role: ctx.eval_scores[role].argmax(axis=1) for role in ctx.roles}
    source = ctx.roles[0]
    changed = np.zeros(len(ctx.eval_idx), dtype=bool)
    for role in ctx.roles[1:]:
        changed |= labels[role] != labels[source]
    rng = np.random.default_rng(config.seed)
    chosen_changed = np.flatnonzero(changed)[: config.occlusion_samples]
    unchanged = np.flatnonzero(~changed)
    chosen_same = np.sort(rng.choice(unchanged, size=min(config.occlusion_unchanged, len(unchanged)), replace=False))
    rows = np.concatenate([chosen_changed, chosen_same]).astype(int)
    if not len(rows):
        return Occlusion(patch, stride, float(ctx.input_range[0]))
    x = x_all[ctx.eval_idx[rows]]
    maps = {}
    for role in ctx.roles:
        runner = ctx.runners[role]

        def predict(batch: np.ndarray, runner=runner) -> np.ndarray:
            return as_log_probabilities(predict_scores(runner, Dataset([batch], None, ctx.dataset.layouts, "occluded")))

        maps[role], _ = occlusion_maps(predict, x, axes, patch, stride, float(ctx.input_range[0]))
    channel_axis = {"NHWC": 3, "NCHW": 1}.get(layout) if x.ndim == 4 else None
    images = x.mean(axis=channel_axis) if channel_axis is not None else x
    low, high = ctx.input_range
    images = np.clip((images - low) / ((high - low) or 1.0), 0.0, 1.0)  # shown on a 0..1 grey scale
    result = Occlusion(patch, stride, float(ctx.input_range[0]))
    for k, row in enumerate(rows):
        result.samples.append(OcclusionSample(
            index=int(ctx.eval_idx[row]), changed=bool(changed[row]),
            labels={role: int(labels[role][row]) for role in ctx.roles},
            image=_grid(_thumbnail(images[k])),
            maps={role: _grid(maps[role][k]) for role in ctx.roles},
            difference={role: _grid(maps[role][k] - maps[source][k]) for role in ctx.roles[1:]},
        ))
    return result


def _thumbnail(image: np.ndarray, largest: int = 32) -> np.ndarray:
    step = max(1, math.ceil(max(image.shape) / largest))
    return image[::step, ::step]
