"""Sample sources and seeded sampling rounds. Inputs are numpy arrays in a declared layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convrepair.errors import BadInput, exception_text
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
        """The samples at `indices`; a run of consecutive indices (every sample, as a check on all
        the data asks) is a view, not a second copy of the inputs (issue 21: 600 KB a 224-px image).
        Callers never write into a dataset's inputs."""
        indices = np.asarray(indices)
        span = _consecutive(indices)
        if span is not None:
            return Dataset([x[span] for x in self.inputs], self.labels[span] if self.labels is not None else None,
                           self.layouts, self.origin)
        labels = self.labels[indices] if self.labels is not None else None
        return Dataset([x[indices] for x in self.inputs], labels, self.layouts, self.origin)


def _consecutive(indices: np.ndarray) -> slice | None:
    """`indices` as a slice when they are integers a, a+1, …, b-1 (None otherwise)."""
    if indices.ndim != 1 or not indices.size or indices.dtype.kind not in "iu":
        return None
    first = int(indices[0])
    if first < 0 or int(indices[-1]) != first + indices.size - 1:
        return None
    if indices.size > 1 and not np.array_equal(np.diff(indices), np.ones(indices.size - 1, indices.dtype)):
        return None
    return slice(first, first + indices.size)


def load_npz(path: Path, specs: list[TensorSpec]) -> Dataset:
    """Read `x` (or one key per input name) and optional `y`; check they fit the model's inputs.

    Refused (BadInput, one line): arrays that are not plain numbers (objects, strings, dates,
    complex), NaN or Inf anywhere, fractional values for an integer input, labels that are neither
    one integer class per sample nor clearly one-hot rows (those become their argmax).
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
        if len(specs) == 1 and "x" in keys:
            names = ["x"]
        else:
            missing = [s.name for s in specs if s.name not in keys]
            if missing:
                want = "'x'" if len(specs) == 1 else f"one key per input {[s.name for s in specs]}"
                raise BadInput(f"data has keys {sorted(keys)}; expected {want}", path)
            names = [s.name for s in specs]
        arrays = [archive[name] for name in names]
        labels = archive["y"] if "y" in keys else None
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy parses headers with tokenize/ast: any error is a bad file
        raise BadInput(f"is not a readable .npz data file: {type(exc).__name__}: {exception_text(exc)}", path) from None
    for name, array in zip(names, arrays):
        _require_numbers(array, f"'{name}'", path)
    count = arrays[0].shape[0] if arrays[0].ndim else 0
    if count == 0 or any(a.ndim == 0 or a.shape[0] != count for a in arrays):
        raise BadInput("data arrays are empty or differ in their number of samples", path)
    if labels is not None:
        labels = _class_labels(labels, count, path)
    for spec, array, name in zip(specs, arrays, names):
        if spec.shape and (array.ndim != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape[1:], array.shape[1:])
        )):
            raise BadInput(
                f"input '{spec.name}' of the model expects {_text(spec.shape)}, data has {tuple(array.shape)}", path
            )
        _require_castable(array, spec, name, path)
    return Dataset([a.astype(spec.dtype or a.dtype, copy=False) for a, spec in zip(arrays, specs)], labels, [s.layout for s in specs], str(path))


def npz_facts(path: Path) -> tuple[int, np.ndarray | None, list[np.ndarray]]:
    """(samples, labels, input arrays) of a data file, read without any model's input specs: the
    parent of a contained check learns what it needs to judge from the file itself, never from the
    worker. Every array but `y` and a golden file's outputs and header counts as an input."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = [archive[k] for k in archive.files if k != "y" and not k.startswith(("output__", "__convrepair"))]
        labels = archive["y"] if "y" in archive.files else None
    except Exception as exc:  # noqa: BLE001 - numpy parses headers with tokenize/ast: any error is a bad file
        raise BadInput(f"is not a readable .npz data file: {type(exc).__name__}: {exception_text(exc)}", path) from None
    for array in arrays:
        _require_numbers(array, "input", path)
    count = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
    if count == 0 or any(a.ndim == 0 or a.shape[0] != count for a in arrays):
        raise BadInput("data arrays are empty or differ in their number of samples", path)
    return count, (_class_labels(labels, count, path) if labels is not None else None), arrays


def _require_numbers(array: np.ndarray, what: str, path: Path) -> None:
    """Plain finite numbers only: a NaN or Inf input makes every comparison meaningless."""
    if array.dtype.kind not in "biuf":
        raise BadInput(f"data {what} holds {array.dtype} values, not numbers (expected float or integer arrays)", path)
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise BadInput(f"data {what} holds {bad} NaN or Inf value(s) of {array.size}", path)


def _require_castable(array: np.ndarray, spec: TensorSpec, name: str, path: Path) -> None:
    """Data that the model's input type holds without changing its meaning."""
    if not spec.dtype:
        return
    try:
        want = np.dtype(spec.dtype)
    except TypeError:
        return  # a framework type numpy does not name: the runner converts
    if want.kind in "iub" and array.dtype.kind == "f" and array.size and not np.all(np.equal(np.mod(array, 1), 0)):
        raise BadInput(f"data '{name}' holds fractional values; input '{spec.name}' of the model takes {want} "
                       "(give integer data)", path)
    if want.kind in "iu" and array.size:
        info = np.iinfo(want)
        if array.min() < info.min or array.max() > info.max:
            raise BadInput(f"data '{name}' holds values outside the {want} range of input '{spec.name}'", path)


def _class_labels(labels: np.ndarray, count: int, path: Path) -> np.ndarray:
    """One integer class per sample; clearly one-hot rows (0/1, exactly one 1) become their argmax."""
    _require_numbers(labels, "'y'", path)
    if labels.ndim == 0 or labels.shape[0] != count:
        have = labels.shape[0] if labels.ndim else 0
        raise BadInput(f"'y' has {have} labels for {count} samples", path)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 2:
        one_hot = labels.shape[1] > 1 and np.isin(labels, (0, 1)).all() and (labels.sum(axis=1) == 1).all()
        if not one_hot:
            raise BadInput(f"'y' has shape {tuple(labels.shape)} but its rows are not one-hot (a single 1 among 0s); "
                           "give one integer class per sample", path)
        return labels.argmax(axis=1)
    if labels.ndim != 1:
        raise BadInput(f"'y' has shape {tuple(labels.shape)}; expected one integer class per sample", path)
    if labels.dtype.kind == "f" and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise BadInput("'y' holds fractional values; expected integer class labels", path)
    if labels.size and labels.min() < 0:
        raise BadInput("'y' holds negative class labels", path)
    return labels.astype(np.int64, copy=False)


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
