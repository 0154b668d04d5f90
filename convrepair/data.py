"""Sample sources and seeded sampling rounds. Inputs are numpy arrays in a declared layout."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convrepair.errors import BadInput
from convrepair.model import TensorSpec

_PERMUTATIONS = {("NHWC", "NCHW"): (0, 3, 1, 2), ("NCHW", "NHWC"): (0, 2, 3, 1)}


@dataclass
class Dataset:
    """Model-ready inputs keyed by position (one array per model input) and optional labels."""

    inputs: list[np.ndarray]
    labels: np.ndarray | None
    layouts: list[str]
    origin: str

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    def take(self, indices: np.ndarray) -> Dataset:
        labels = self.labels[indices] if self.labels is not None else None
        return Dataset([x[indices] for x in self.inputs], labels, self.layouts, self.origin)


def load_npz(path: Path, specs: list[TensorSpec]) -> Dataset:
    """Read `x` (or one key per input name) and optional `y`; check they fit the model's inputs."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BadInput(f"is not a readable .npz data file: {exc}", path) from None
    if len(specs) == 1 and "x" in keys:
        arrays = [archive["x"]]
    else:
        missing = [s.name for s in specs if s.name not in keys]
        if missing:
            want = "'x'" if len(specs) == 1 else f"one key per input {[s.name for s in specs]}"
            raise BadInput(f"data has keys {sorted(keys)}; expected {want}", path)
        arrays = [archive[s.name] for s in specs]
    labels = archive["y"] if "y" in keys else None
    count = arrays[0].shape[0] if arrays[0].ndim else 0
    if count == 0 or any(a.shape[0] != count for a in arrays):
        raise BadInput("data arrays are empty or differ in their number of samples", path)
    if labels is not None and labels.shape[0] != count:
        raise BadInput(f"'y' has {labels.shape[0]} labels for {count} samples", path)
    for spec, array in zip(specs, arrays):
        if spec.shape and (array.ndim != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape[1:], array.shape[1:])
        )):
            raise BadInput(
                f"input '{spec.name}' of the model expects {_text(spec.shape)}, data has {tuple(array.shape)}", path
            )
    return Dataset([a.astype(spec.dtype or a.dtype, copy=False) for a, spec in zip(arrays, specs)], labels, [s.layout for s in specs], str(path))


def random_inputs(specs: list[TensorSpec], count: int, seed: int, input_range: tuple[float, float] = (0.0, 1.0)) -> Dataset:
    """Uniform inputs in `input_range` for models with no sample data; dynamic dims become 1."""
    rng = np.random.default_rng(seed)
    low, high = input_range
    arrays = []
    for spec in specs:
        shape = [count, *[1 if d is None else d for d in spec.shape[1:]]]
        arrays.append(rng.uniform(low, high, size=shape).astype(spec.dtype or "float32"))
    return Dataset(arrays, None, [s.layout for s in specs], f"uniform[{low}, {high}]")


def sampling_rounds(total: int, rounds: int, samples: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """`rounds` seeded draws of `samples` distinct indices (fewer when the data is smaller)."""
    out = []
    for r in range(rounds):
        round_seed = seed * 1000 + r
        rng = np.random.default_rng(round_seed)
        out.append((round_seed, np.sort(rng.choice(total, size=min(samples, total), replace=False))))
    return out


def to_layout(array: np.ndarray, have: str, want: str) -> np.ndarray:
    """Transpose an image batch between NHWC and NCHW; other layouts pass unchanged."""
    perm = _PERMUTATIONS.get((have, want))
    return np.ascontiguousarray(array.transpose(perm)) if perm else array


def feeds_for(specs: list[TensorSpec], dataset: Dataset, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """A batch for a runner: positional data mapped to its input names, moved to its layouts."""
    return {
        spec.name: to_layout(array[start:stop], have, spec.layout)
        for spec, array, have in zip(specs, dataset.inputs, dataset.layouts)
    }


def batches(count: int, batch_size: int):
    for start in range(0, count, batch_size):
        yield start, min(start + batch_size, count)


def _text(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
