"""The input check: does the first aligned layer see the same input in both models? If not, what
explains it: an affine rescaling, an axis order, or channels in reverse order."""

from __future__ import annotations

from typing import Any

import numpy as np

from convrepair.localize.capture import capture
from convrepair.localize.tensors import direct_diff, layout_permutations


def compare_first_inputs(source_view, target_view, pairs, s_model, t_model, s_feeds, t_feeds, agreement: float = 1e-4,
                         layouts: dict[str, str] | None = None) -> dict[str, Any]:
    """Does the first layer see the same input in both? If not: scale/offset, axis order or channel order.
    Differences within `agreement` (rel_l2: rounding to the target's precision) are agreement.
    Channels are reversed along the channel axis of the layout in force (see `_channel_axis`)."""
    if not pairs:
        return {}
    s_first, t_first = pairs[0]
    s_name, t_name = source_view.float_origin(s_first.node.inputs[0]), target_view.float_origin(t_first.node.inputs[0])
    s_value = s_feeds[s_name] if s_name in s_feeds else capture(s_model, [s_name], s_feeds)[s_name]
    t_value = t_feeds[t_name] if t_name in t_feeds else capture(t_model, [t_name], t_feeds)[t_name]
    s_value, t_value = s_value.astype(np.float32), t_value.astype(np.float32)
    direct = direct_diff(s_value, t_value) if s_value.shape == t_value.shape else None
    evidence: dict[str, Any] = {"source_tensor": s_name, "target_tensor": t_name}
    if direct is not None and direct.rel_l2 <= agreement:
        return evidence | {"agree": True, "metric": direct.to_json()}
    evidence["agree"] = False
    evidence["same_shape"] = s_value.shape == t_value.shape
    if direct is not None:
        evidence["metric"] = direct.to_json()
    for perm in layout_permutations(s_value.shape, t_value.shape):
        if perm == tuple(range(s_value.ndim)):
            continue
        moved = direct_diff(np.transpose(s_value, perm), t_value)
        if moved is not None and moved.rel_l2 <= 1e-4:
            evidence["permutation"] = list(perm)
            return evidence
    if s_value.shape == t_value.shape:
        axis = _channel_axis(t_first, t_name, layouts or {})
        if s_value.ndim == 4 and s_value.shape[axis] > 1:
            flipped = direct_diff(np.flip(s_value, axis), t_value)
            if flipped.rel_l2 <= 1e-4:
                evidence |= {"channel_reversed": True, "channel_axis": axis, "channels": int(s_value.shape[axis])}
                return evidence
        a = np.vstack([s_value.ravel(), np.ones(s_value.size)]).T
        (scale, offset), *_ = np.linalg.lstsq(a, t_value.ravel(), rcond=None)
        residual = float(np.linalg.norm(a @ np.array([scale, offset]) - t_value.ravel()) / max(np.linalg.norm(t_value), 1e-12))
        rms = float(np.sqrt(np.mean(s_value.astype(np.float64) ** 2))) if s_value.size else 0.0
        evidence["affine_fit"] = {"scale": float(scale), "offset": float(offset), "residual": residual}
        if abs(scale - 1.0) <= agreement and abs(offset) <= agreement * max(rms, 1e-12) and residual <= 10 * agreement:
            return evidence | {"agree": True, "rounding": True}  # ×1 ± rounding: the precision, not the pipeline
    return evidence


def _channel_axis(first_layer, tensor: str, layouts: dict[str, str]) -> int:
    """A convolution reads NCHW (ONNX's Conv): axis 1. Any other first layer reads the input in its
    recorded layout: axis 3 for NHWC (a Gather or a Mul before it keeps that layout)."""
    if first_layer.node.kind == "conv":
        return 1
    layout = layouts.get(tensor) or next(iter(layouts.values()), "NCHW")
    return 3 if layout.upper() == "NHWC" else 1
