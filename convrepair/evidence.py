"""The raw tensors a check is judged on, and how they cross from the contained worker to the parent.

Like a browser's renderer and broker: the worker runs the models and hands back arrays — both
models' outputs on the samples the parent asked for, the source on nudged inputs (its float
noise), the target one sample at a time (batch invariance) — as `.npy` files in a folder the parent
chose, plus a small JSON of names. The parent reads them with `allow_pickle=False`, refuses any
file it did not ask for or whose shape or type is not what it asked for, hashes each file, and
judges them itself (`check.judge_evidence`). Nothing the worker computed beyond tensors decides.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.errors import BadInput, ConvrepairError, exception_text
from convrepair.judge import BATCH_SAMPLES, FLOOR_SAMPLES, FLOOR_SAMPLES_SINGLE, PERTURBATION, spread

if TYPE_CHECKING:
    from convrepair.data import Dataset
    from convrepair.job import JobContext, ModelHandle

FACTS = "facts.json"
_KINDS = ("source", "target", "nudged", "single")


@dataclass
class Evidence:
    """Outputs by position on `indices` (sorted distinct dataset indices every round draws from)."""

    indices: np.ndarray
    source: list[np.ndarray]
    target: list[np.ndarray]
    source_names: list[str]
    target_names: list[str]
    floor_positions: np.ndarray  # positions into `indices` the source also ran nudged on
    nudged: list[np.ndarray] | None
    floor_method: str
    single_positions: np.ndarray  # positions into `indices` the target also ran one at a time on
    single: list[np.ndarray] | None
    single_error: str | None = None
    integer_inputs: bool = False  # the floor then runs the source one sample at a time on fewer samples
    digests: dict[str, str] = field(default_factory=dict)  # file → sha256, hashed by the reader

    def round_outputs(self, round_indices: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Both models' outputs on one round's samples (in the round's order)."""
        at = np.searchsorted(self.indices, round_indices)
        return [s[at] for s in self.source], [t[at] for t in self.target]


def distinct(plan: list[tuple[int, np.ndarray]]) -> np.ndarray:
    return np.unique(np.concatenate([indices for _, indices in plan])).astype(np.int64)


def floor_positions(count: int, integer_inputs: bool) -> np.ndarray:
    return spread(count, FLOOR_SAMPLES_SINGLE if integer_inputs else FLOOR_SAMPLES)


def gather(job: JobContext, source: ModelHandle, target: ModelHandle, dataset: Dataset, indices: np.ndarray,
           batch_size: int, floor: bool) -> Evidence:
    """Run both models on `dataset[indices]` (once each, through the job), the source again on
    nudged inputs when `floor`, and a few samples of the target one at a time.

    Each model does all its runs before the other starts, and what the source's runs freed goes
    back to the system in between (`memory.trim`): the peak is the larger model's, not the sum
    of both models' largest batches (issue 21)."""
    from convrepair import memory
    from convrepair.compare import check_output_counts

    s_out = job.outputs(source, dataset, indices, batch_size)
    integer = not any(np.issubdtype(x.dtype, np.floating) for x in dataset.inputs)
    positions = floor_positions(len(indices), integer) if floor else np.zeros(0, np.int64)
    nudged, method = (_nudged(job, source, dataset, indices[positions], job.batch_for(source, batch_size),
                              [s[positions] for s in s_out])
                      if floor else (None, "none"))
    memory.trim()
    t_out = job.outputs(target, dataset, indices, batch_size)
    names = job.output_names(source), job.output_names(target)
    check_output_counts(job.runner(source), job.runner(target), dict(zip(names[0], s_out)), dict(zip(names[1], t_out)))
    singles = spread(len(indices), BATCH_SAMPLES)
    single, error = _one_at_a_time(job, target, dataset, indices[singles])
    memory.trim()
    return Evidence(indices, s_out, t_out, names[0], names[1], positions, nudged, method, singles, single, error, integer)


def _nudged(job, source, dataset, chosen, batch_size, reference) -> tuple[list[np.ndarray], str]:
    """The source on its inputs × (1 ± 1e-6), or one sample at a time where inputs are integers."""
    from convrepair.data import Dataset as Data
    from convrepair.data import batches, feeds_for

    subset = dataset.take(chosen)
    runner = job.runner(source)
    floats = [np.issubdtype(x.dtype, np.floating) for x in subset.inputs]
    if any(floats):
        rng = np.random.default_rng(0)
        nudged = [x * (1 + rng.uniform(-PERTURBATION, PERTURBATION, x.shape)).astype(x.dtype) if is_float else x
                  for x, is_float in zip(subset.inputs, floats)]
        subset, method, step = Data(nudged, None, subset.layouts, subset.origin), f"inputs × (1 ± {PERTURBATION:g})", batch_size
    else:
        method, step = "batch size 1 against the full batch", 1
    try:
        parts = [list(runner.run(feeds_for(runner.inputs, subset, a, b)).values()) for a, b in batches(len(subset), step)]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))], method
    except Exception as exc:  # noqa: BLE001 - a source that only replays recorded outputs (a golden file) cannot be nudged
        why = exc.one_line() if isinstance(exc, ConvrepairError) else exception_text(exc, 120)
        return [r.copy() for r in reference], f"none (the source cannot run on other inputs: {why}); the fp32 floor applies"


def _one_at_a_time(job, target, dataset, chosen) -> tuple[list[np.ndarray] | None, str | None]:
    from convrepair.data import feeds_for

    runner = job.runner(target)
    subset = dataset.take(chosen)
    try:
        parts = [list(runner.run(feeds_for(runner.inputs, subset, i, i + 1)).values()) for i in range(len(subset))]
    except Exception as exc:  # noqa: BLE001 - a target that only runs whole batches is reported, not judged
        why = exc.one_line() if isinstance(exc, ConvrepairError) else exception_text(exc, 120)
        return None, f"the target cannot run one sample at a time: {why}"
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))], None


# --- across the process boundary ------------------------------------------------------------------


def write(evidence: Evidence, folder: Path) -> dict[str, Any]:
    """The worker's side: each tensor as `KIND_I.npy` in `folder`, the names as `facts.json`."""
    folder = Path(folder)
    for kind in _KINDS:
        for i, array in enumerate(getattr(evidence, kind) or []):
            np.save(folder / f"{kind}_{i}.npy", np.ascontiguousarray(array), allow_pickle=False)
    facts = {"source_names": evidence.source_names, "target_names": evidence.target_names,
             "floor_method": evidence.floor_method, "single_error": evidence.single_error,
             "nudged": evidence.nudged is not None, "single": evidence.single is not None,
             "integer_inputs": evidence.integer_inputs}
    (folder / FACTS).write_text(json.dumps(facts))
    return facts


def read(folder: Path, indices: np.ndarray, floor: bool) -> Evidence:
    """The parent's side: exactly the files asked for, plain numbers of the shapes asked for, each
    hashed here. Anything else is refused (BadInput, one line), never judged."""
    folder = Path(folder)
    try:
        facts = json.loads((folder / FACTS).read_text())
        source_names, target_names = [str(n) for n in facts["source_names"]], [str(n) for n in facts["target_names"]]
        has_single, integer_inputs = bool(facts["single"]), bool(facts["integer_inputs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"the contained worker left no readable {FACTS}: {type(exc).__name__}", folder) from None
    if len(source_names) != len(target_names) or not source_names:
        raise BadInput(f"output counts differ: source has {len(source_names)} ({source_names}), "
                       f"target has {len(target_names)} ({target_names})")
    count = len(source_names)
    positions = floor_positions(len(indices), integer_inputs) if floor else np.zeros(0, np.int64)
    singles = spread(len(indices), BATCH_SAMPLES)
    expected = {f"{kind}_{i}.npy" for i in range(count) for kind in ("source", "target")}
    expected |= {f"nudged_{i}.npy" for i in range(count)} if floor else set()
    expected |= {f"single_{i}.npy" for i in range(count)} if has_single else set()
    present = set(os.listdir(folder)) - {FACTS}
    if present != expected:
        odd = sorted(present ^ expected)[:3]
        raise BadInput(f"the contained worker's evidence is not what was asked for (unexpected or missing: {odd}); "
                       "nothing was judged", folder)
    digests: dict[str, str] = {}

    def load(kind: str, rows: int, like: list[np.ndarray] | None = None) -> list[np.ndarray]:
        arrays = []
        for i in range(count):
            name = f"{kind}_{i}.npy"
            array, digests[name] = _load(folder / name)
            want = (rows, *like[i].shape[1:]) if like is not None else None
            if array.ndim == 0 or array.shape[0] != rows or (want is not None and array.shape != want):
                raise BadInput(f"the contained worker's {name} has shape {array.shape}; "
                               f"{'expected ' + str(want) if want else f'{rows} rows were asked for'}", folder)
            arrays.append(array)
        return arrays

    s_out = load("source", len(indices))
    t_out = load("target", len(indices))
    nudged = load("nudged", len(positions), s_out) if floor else None
    single = load("single", len(singles), t_out) if has_single else None
    method = str(facts.get("floor_method", ""))[:300]
    error = facts.get("single_error")
    return Evidence(indices, s_out, t_out, source_names, target_names, positions, nudged, method, singles, single,
                    str(error)[:300] if error else None, integer_inputs, digests)


def _load(path: Path) -> tuple[np.ndarray, str]:
    """One `.npy`: a regular file of plain numbers (never a pickle), and its sha256 over the bytes read."""
    import io

    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise BadInput("the contained worker left something that is not a regular file", path)
    data = path.read_bytes()
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BadInput(f"is not a plain .npy array: {exception_text(exc, 120)}", path) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise BadInput(f"holds {getattr(array, 'dtype', type(array))} values, not numbers", path)
    return array, hashlib.sha256(data).hexdigest()
