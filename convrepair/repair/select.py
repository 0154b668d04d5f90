"""Which data drives a patch search, and which weights it may change (Arachne / NeuRecover).

Negatives are the samples to fix, positives those that must stay right. Weights of the patched
(last dense) layer are ranked by backward impact |∂L/∂w| and forward impact |o_j · w_ij| on each
set. With a history (the source model of a conversion, or version N−1 of a registry model)
NeuRecover's formula picks `(B_neg ∩ F_neg) ∩ W_diff \\ (B_pos ∩ F_pos)` from top-N_g sets;
without one, Arachne's Pareto front over (B_neg, F_neg).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RepairData:
    """Activations entering the patched layer, its base outputs, and the labels wanted."""

    inputs: np.ndarray  # (N, F) activations entering the layer
    base: np.ndarray  # (N, C) layer outputs with the current weights
    wanted: np.ndarray  # (N,) labels the model should give
    negatives: np.ndarray  # indices into the rows above
    positives: np.ndarray


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def impacts(inputs: np.ndarray, logits: np.ndarray, wanted: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(backward, forward) impact of every weight (C, F) on these samples."""
    onehot = np.eye(logits.shape[1])[wanted]
    grad = (softmax(logits) - onehot).T @ inputs / max(len(inputs), 1)  # ∂CE/∂W, (C, F)
    forward = np.abs(weight) * np.abs(inputs).mean(axis=0)[None, :]
    return np.abs(grad), forward


def _top(values: np.ndarray, count: int) -> set[int]:
    flat = values.ravel()
    count = min(count, flat.size)
    return set(np.argpartition(-flat, count - 1)[:count].tolist())


def pareto_front(a: np.ndarray, b: np.ndarray) -> list[int]:
    """Indices not dominated in (a, b), both to be maximised."""
    order = np.lexsort((-b, -a))
    front, best_b = [], -np.inf
    for index in order:
        if b[index] > best_b:
            front.append(int(index))
            best_b = b[index]
    return front


def localize_weights(data: RepairData, weight: np.ndarray, history: np.ndarray | None, top_n: int, limit: int) -> list[tuple[int, int]]:
    """(row, column) of the weights the search may change, most impactful first."""
    neg, pos = data.negatives, data.positives
    b_neg, f_neg = impacts(data.inputs[neg], data.base[neg], data.wanted[neg], weight)
    b_pos, f_pos = impacts(data.inputs[pos], data.base[pos], data.wanted[pos], weight) if len(pos) else (np.zeros_like(weight),) * 2
    chosen: list[int] = []
    if history is not None:
        regress = _top(b_neg, top_n) & _top(f_neg, top_n)
        keep = _top(b_pos, top_n) & _top(f_pos, top_n)
        w_diff = _top(np.abs(weight - history), top_n)
        chosen = sorted((regress & w_diff) - keep, key=lambda i: -b_neg.ravel()[i])
    if len(chosen) < limit:  # Arachne's Pareto front fills up (and stands alone without a history)
        protected = _top(b_pos, top_n) & _top(f_pos, top_n)
        for index in pareto_front(b_neg.ravel(), f_neg.ravel()) + list(np.argsort(-b_neg.ravel())):
            if index not in protected and index not in chosen:
                chosen.append(int(index))
            if len(chosen) >= limit:
                break
    return [divmod(int(i), weight.shape[1]) for i in chosen[:limit]]


def boundary_order(logits: np.ndarray, labels: np.ndarray, success_logits: np.ndarray, success_labels: np.ndarray) -> np.ndarray:
    """Without history: negatives closest to the decision boundary (d2 = max(Y) − Y[true], small
    first) and far from the nearest success of another class (d1 = ‖Y_A − Y_B‖, large first)."""
    d2 = logits.max(axis=1) - logits[np.arange(len(labels)), labels]
    if len(success_logits):
        dist = np.linalg.norm(logits[:, None, :] - success_logits[None, :, :], axis=2)
        other = labels[:, None] != success_labels[None, :]
        d1 = np.where(other, dist, np.inf).min(axis=1)
        d1 = np.where(np.isfinite(d1), d1, 0.0)
    else:
        d1 = np.zeros(len(labels))
    return np.lexsort((-d1, d2))
