"""Golden files: a model's inputs and outputs saved where its framework lives, compared elsewhere.

Like Polygraphy's `--save-outputs`/`--load-outputs`: the reference is computed once on the
machine that has the source's framework; `convrepair check GOLDEN.npz TARGET` then needs only
the target's. A golden file is a plain `.npz` (never pickled) that the `golden` plugin loads as a
`Runner`: inputs under `x` (one input) or their names, optional labels `y`, every output under
`output__NAME`, and a JSON header under `MARKER` naming specs, layouts and the source's sha256. So
the same file is also valid `--data`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from convrepair.data import Dataset, batches, feeds_for
from convrepair.fsutil import atomic_output
from convrepair.model import ModelRef, Runner, TensorSpec

MARKER = "__convrepair_golden__"
SCHEMA = "convrepair.golden/v1"
OUTPUT_PREFIX = "output__"


def input_keys(specs: list[TensorSpec]) -> list[str]:
    """`x` for a single-input model (what `--data` reads), else the input names."""
    return ["x"] if len(specs) == 1 else [spec.name for spec in specs]


def save_inputs(path: Path, specs: list[TensorSpec], dataset: Dataset) -> Path:
    """The dataset as `--data` reads it (source layout), written atomically."""
    arrays = dict(zip(input_keys(specs), dataset.inputs))
    if dataset.labels is not None:
        arrays["y"] = dataset.labels
    return _write_npz(path, arrays)


def save_outputs(path: Path, source: Runner, ref: ModelRef, dataset: Dataset, batch_size: int = 256) -> Path:
    """Run `source` on every row of `dataset` and write inputs, outputs and a header."""
    collected: dict[str, list[np.ndarray]] = {}
    for start, stop in batches(len(dataset), batch_size):
        values = source.run(feeds_for(source.inputs, dataset, start, stop))
        for name, value in values.items():  # some runners learn their outputs on the first run
            collected.setdefault(name, []).append(np.asarray(value))
    header: dict[str, Any] = {
        "schema": SCHEMA,
        "source": {"path": ref.path.name, "format": ref.format, "sha256": ref.sha256},
        "inputs": [spec.to_json() | {"key": key, "layout": layout}
                   for spec, key, layout in zip(source.inputs, input_keys(source.inputs), dataset.layouts)],
        "outputs": [spec.to_json() for spec in source.outputs],
    }
    arrays = dict(zip(input_keys(source.inputs), dataset.inputs))
    if dataset.labels is not None:
        arrays["y"] = dataset.labels
    arrays.update({OUTPUT_PREFIX + name: np.concatenate(parts) for name, parts in collected.items()})
    arrays[MARKER] = np.array(json.dumps(header))
    return _write_npz(path, arrays)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:  # a file handle: np.savez would append '.npz' to a name
            np.savez(handle, **arrays)
    return path


def save_reference(registry, source_path: Path, config, inputs_path: Path | None, outputs_path: Path | None) -> None:
    """`check --save-inputs/--save-outputs`: the data check compares on, and the source's outputs on it.

    Loads the source once more than the check itself does — only when asked.
    """
    from convrepair.check import load_dataset
    from convrepair.model import model_ref
    from convrepair.sidecar import read_sidecar

    ref = model_ref(source_path, registry)
    sidecar = read_sidecar(ref.path)
    with registry.load(ref, sidecar, device="cpu") as source:
        dataset = load_dataset(config, source.inputs, sidecar)
        if inputs_path is not None:
            save_inputs(inputs_path, source.inputs, dataset)
        if outputs_path is not None:
            save_outputs(outputs_path, source, ref, dataset)
