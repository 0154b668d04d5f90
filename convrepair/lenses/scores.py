"""Class scores of a runner as log-probabilities, the common currency of the lenses."""

from __future__ import annotations

import numpy as np

from convrepair.data import Dataset, batches, feeds_for
from convrepair.model import Runner


class LensUnavailable(Exception):
    """A lens cannot run on these models or this data; the message says why (it is reported, not raised)."""


def log_softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = scores.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def looks_like_probabilities(scores: np.ndarray) -> bool:
    """Rows in [0, 1] summing to 1: the model ends in a softmax (else its outputs are logits)."""
    scores = np.asarray(scores)
    return bool(scores.min() >= 0 and scores.max() <= 1 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def as_log_probabilities(scores: np.ndarray) -> np.ndarray:
    """Logits → log-softmax; rows that are already probabilities (a softmax head) → their log."""
    scores = np.asarray(scores, dtype=np.float64)
    if looks_like_probabilities(scores):
        return np.log(np.clip(scores, 1e-12, None))
    return log_softmax(scores)


def predict_scores(runner: Runner, dataset: Dataset, batch_size: int = 512) -> np.ndarray:
    """The first output of `runner` over all of `dataset`, as (N, classes) raw scores."""
    parts = []
    for start, stop in batches(len(dataset), batch_size):
        values = runner.run(feeds_for(runner.inputs, dataset, start, stop))
        parts.append(np.asarray(next(iter(values.values()))))
    scores = np.concatenate(parts)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise LensUnavailable(f"the first output has shape {tuple(scores.shape)}, not (samples, classes): not a classifier")
    return scores.astype(np.float64)


def entropy(log_p: np.ndarray) -> np.ndarray:
    return -(np.exp(log_p) * log_p).sum(axis=1)


def histogram(values: np.ndarray, low: float, high: float, bins: int = 20) -> dict[str, list]:
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}
