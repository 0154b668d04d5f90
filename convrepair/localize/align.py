"""Align the layers of two graphs: by canonical kind in topological order, helped by names.

Exporters rename everything (tf2onnx keeps Keras names as prefixes, torch.onnx uses module paths,
onnx2torch keeps ONNX node names), so names only break ties; the order and the kind of layers
carry the alignment. Layers left without a partner are evidence of a structure change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from convrepair.localize.graph import Layer

_NOISE = {"statefulpartitionedcall", "onnx", "node", "output", "biasadd", "convolution", "matmul", "batchnorm"}


@dataclass
class Alignment:
    pairs: list[tuple[Layer, Layer]]
    source_only: list[Layer]
    target_only: list[Layer]


def name_tokens(name: str) -> set[str]:
    tokens = {t for t in re.split(r"[^a-z0-9]+", name.lower()) if t and not t.isdigit()}
    return {re.sub(r"_?\d+$", "", t) for t in tokens} - _NOISE


def _score(a: Layer, b: Layer) -> float:
    if a.kind != b.kind:
        return -np.inf
    shared = name_tokens(a.node.name) & name_tokens(b.node.name)
    return 2.0 + (1.0 if shared else 0.0) + (0.5 if a.node.op == b.node.op else 0.0)


def align(source: list[Layer], target: list[Layer]) -> Alignment:
    """Needleman–Wunsch over the two layer sequences (gap cost 0, kinds must match)."""
    n, m = len(source), len(target)
    best = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best[i, j] = max(best[i - 1, j], best[i, j - 1], best[i - 1, j - 1] + max(_score(source[i - 1], target[j - 1]), -1e9))
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        match = _score(source[i - 1], target[j - 1])
        if np.isfinite(match) and best[i, j] == best[i - 1, j - 1] + match:
            pairs.append((source[i - 1], target[j - 1]))
            i, j = i - 1, j - 1
        elif best[i, j] == best[i - 1, j]:
            i -= 1
        else:
            j -= 1
    pairs.reverse()
    paired_s = {id(s) for s, _ in pairs}
    paired_t = {id(t) for _, t in pairs}
    return Alignment(
        pairs=pairs,
        source_only=[s for s in source if id(s) not in paired_s],
        target_only=[t for t in target if id(t) not in paired_t],
    )
