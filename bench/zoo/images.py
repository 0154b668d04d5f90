"""Real photographs for the image models: crops, flips and scales of scikit-learn's two sample
photos (china.jpg, flower.jpg; bundled, no download), as uint8 RGB batches (N, H, W, 3)."""

from __future__ import annotations

import numpy as np

SEED = 0


def photo_crops(count: int, side: int, seed: int = SEED) -> np.ndarray:
    """`count` square crops of random position and scale (30–100% of the short side), half of
    them mirrored, resized to `side` × `side` with bilinear filtering. Deterministic in `seed`."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((count, side, side, 3), dtype=np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        crop = int(rng.uniform(0.3, 1.0) * min(height, width))
        top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
        patch = Image.fromarray(photo[top : top + crop, left : left + crop])
        if rng.random() < 0.5:
            patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(patch.resize((side, side), Image.Resampling.BILINEAR))
    return out


def alive_classifier(scores: np.ndarray, what: str) -> dict:
    """Proof that a classifier's outputs depend on its input, as a trained model's do.

    Raises when they do not: a model whose outputs barely vary would make every check vacuous.
    """
    scores = np.asarray(scores, dtype=np.float64)
    predicted = scores.argmax(1)
    counts = np.bincount(predicted, minlength=scores.shape[1])
    per_class_std = scores.std(0)
    stats = {
        "samples": int(len(scores)),
        "distinct_predictions": int((counts > 0).sum()),
        "top_class_share": round(float(counts.max() / len(scores)), 4),
        "mean_per_class_std": float(per_class_std.mean()),
        "relative_std": float(per_class_std.mean() / (np.abs(scores).mean() + 1e-12)),
        "mean_top1_probability": float(_softmax(scores).max(1).mean()),
    }
    if stats["distinct_predictions"] < min(5, len(scores) // 4) or stats["top_class_share"] > 0.5 or stats["relative_std"] < 1e-2:
        raise RuntimeError(f"{what}: outputs barely depend on the input: {stats}")
    return stats


def spread_classifier(features: np.ndarray, classes: int, seed: int = SEED, logit_std: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Classifier weights (kernel [features, classes], bias) whose logits vary with the input like a
    trained model's: a random projection of the standardized features, scaled so each class's logit
    has `logit_std` across the samples, centred so no class wins everything."""
    rng = np.random.default_rng(seed)
    features = np.asarray(features, dtype=np.float64)
    mean, std = features.mean(0), features.std(0) + 1e-6
    projection = rng.standard_normal((features.shape[1], classes)) / np.sqrt(features.shape[1])
    kernel = projection / std[:, None]
    logits = (features - mean) @ kernel
    kernel *= logit_std / (logits.std(0) + 1e-9)
    bias = -(mean @ kernel)
    return kernel.astype(np.float32), bias.astype(np.float32)


def _softmax(scores: np.ndarray) -> np.ndarray:
    if np.all(scores >= 0) and np.allclose(scores.sum(1), 1.0, atol=1e-3):
        return scores
    z = np.exp(scores - scores.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)
