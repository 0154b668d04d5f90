"""Compare two activations whose layouts may differ: find the axis order that makes them agree.

Rather than assume NCHW↔NHWC, try every permutation of the non-batch axes that makes the shapes
match (onnx2tf searches axis orders the same way) and keep the one with the smallest error.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from convrepair.compare import error_percentiles


@dataclass
class TensorDiff:
    max_abs: float
    max_rel: float
    cosine: float
    rel_l2: float  # ||s - t|| / ||s||: the divergence measure the walk thresholds
    permutation: tuple[int, ...] | None  # applied to the source to match the target's layout
    rel_error_percentiles: dict[str, float] | None = None  # per-sample ||s_i - t_i|| / ||s_i||

    def to_json(self) -> dict:
        return {
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine": self.cosine,
            "rel_l2": self.rel_l2,
            "permutation": list(self.permutation) if self.permutation else None,
            "rel_error_percentiles": self.rel_error_percentiles,
            # as Polygraphy's "minimum required tolerance": either alone would pass every value
            "min_passing_tolerance": {"atol": self.max_abs, "rtol": self.max_rel},
        }


def _sample_percentiles(s: np.ndarray, t: np.ndarray) -> dict[str, float] | None:
    """Percentiles of the per-sample relative error ||s_i - t_i|| / ||s_i|| (axis 0 is the sample axis)."""
    if s.ndim == 0 or not len(s):
        return None
    s2, t2 = s.astype(np.float64).reshape(len(s), -1), t.astype(np.float64).reshape(len(t), -1)
    return error_percentiles(np.linalg.norm(s2 - t2, axis=1) / np.maximum(np.linalg.norm(s2, axis=1), 1e-12))


def direct_diff(s: np.ndarray, t: np.ndarray) -> TensorDiff:
    s64, t64 = s.astype(np.float64).ravel(), t.astype(np.float64).ravel()
    delta = np.abs(s64 - t64)
    norm_s, norm_t = np.linalg.norm(s64), np.linalg.norm(t64)
    cosine = float(s64 @ t64 / (norm_s * norm_t)) if norm_s > 0 and norm_t > 0 else float(norm_s == norm_t)
    return TensorDiff(
        max_abs=float(delta.max(initial=0.0)),
        max_rel=float((delta / np.maximum(np.abs(s64), 1e-6)).max(initial=0.0)),
        cosine=cosine,
        rel_l2=float(np.linalg.norm(s64 - t64) / max(norm_s, 1e-12)),
        permutation=None,
        rel_error_percentiles=_sample_percentiles(s, t) if s.shape == t.shape else None,
    )


def layout_permutations(source_shape: tuple, target_shape: tuple) -> list[tuple[int, ...]]:
    """Axis orders (batch axis fixed) that turn `source_shape` into `target_shape`."""
    if len(source_shape) != len(target_shape) or len(source_shape) > 6:
        return []
    rest = range(1, len(source_shape))
    return [
        (0, *perm)
        for perm in itertools.permutations(rest)
        if tuple(source_shape[p] for p in (0, *perm)) == tuple(target_shape)
    ]


def compare_tensors(source: np.ndarray, target: np.ndarray) -> TensorDiff | None:
    """Same shapes: compared as they are. Otherwise the best agreement over layout permutations;
    None when no axis order makes them comparable."""
    if source.shape == target.shape:
        return direct_diff(source, target)
    candidates = layout_permutations(source.shape, target.shape)
    best: TensorDiff | None = None
    for perm in candidates:
        diff = direct_diff(np.transpose(source, perm), target)
        diff.permutation = None if perm == tuple(range(source.ndim)) else perm
        if best is None or diff.rel_l2 < best.rel_l2:
            best = diff
    return best
