"""One job's models, opened once: resolved, hashed, loaded, exported to ONNX and run once each.

Like a Polygraphy runner, a `JobContext` is opened once, passed forward through compare →
localize → repair → lenses, and closed once. It owns, per model file: its `ModelRef` (resolved
and hashed once), its sidecar, its runner, its ONNX IR (per export options) and the outputs it
already computed on the job's data. It lives inside one process (a contained worker runs a whole
`run_check`/`run_repair`); what leaves it are JSON-able reports.

ONNX IRs come from `convrepair.onnx_ir` (below this module): from the IR cache across jobs (where
`ir_export.export_ahead` left them before the job's worker started), else exported for the job.
`prepare_ir` has one ready before any model is loaded, for a caller that knows it will localize.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair import memory
from convrepair.events import stage
from convrepair.model import ModelRef, model_ref
from convrepair.sidecar import Sidecar, read_sidecar

if TYPE_CHECKING:
    from convrepair.data import Dataset
    from convrepair.localize.graph import GraphView
    from convrepair.model import Runner
    from convrepair.onnx_ir import Exports, OnnxIR
    from convrepair.plugins import PluginRegistry


MEMORY_PROBE = 8  # samples in a model's first batch, which measures its bytes per sample


@dataclass
class ModelHandle:
    """One model file within a job: what it is, and what the job has already done with it."""

    ref: ModelRef
    sidecar: Sidecar | None
    runner: Runner | None = None
    irs: dict[str, OnnxIR] = field(default_factory=dict)  # by export options
    outputs: dict[tuple, list[np.ndarray]] = field(default_factory=dict)  # by (data, indices)
    bytes_per_sample: int | None = None  # measured on the model's first small batch (memory-sized batches)

    @property
    def precision(self) -> str:
        return self.sidecar.precision if self.sidecar else "fp32"


class JobContext:
    """Opened once per job; `model(path)` gives the same `ModelHandle` every time it is asked."""

    def __init__(self, registry: PluginRegistry, device: str = "cpu", memory_mb: int | None = None,
                 ir_cache: Path | str | None = "default"):
        from convrepair import ircache

        self.registry = registry
        self.device = device
        self.memory_mb = memory_mb  # what one batch may use; None: a share of what the machine has free
        self.models: dict[tuple, ModelHandle] = {}
        self.datasets: dict[tuple, Dataset] = {}
        self.graphs: dict[str, tuple[Any, GraphView]] = {}  # ONNX file → (ModelProto, GraphView)
        self.cache: dict[tuple, Any] = {}  # small derived results (noise floors …) by key
        self.workdir = Path(tempfile.mkdtemp(prefix="convrepair-job-"))
        self.counts = {"resolve": 0, "load": 0, "export": 0}  # what the job did, for the benchmark
        # where IRs are kept across jobs ("default": ircache.cache_dir(); None or "off": nowhere)
        self.ir_cache = ircache.cache_dir() if ir_cache == "default" else (None if ir_cache in (None, "off") else Path(ir_cache))
        self._exports: Exports | None = None

    # --- models ---------------------------------------------------------------------------------

    def model(self, path: str | Path, fmt: str | None = None) -> ModelHandle:
        path = Path(path)
        key = _file_key(path)
        handle = self.models.get(key)
        if handle is None:
            self.counts["resolve"] += 1
            ref = model_ref(path, self.registry, fmt)
            handle = ModelHandle(ref, read_sidecar(ref.path) or self.registry.implied_sidecar(ref))
            self.models[key] = handle
        return handle

    def runner(self, handle: ModelHandle) -> Runner:
        if handle.runner is None:
            self.counts["load"] += 1
            with stage(f"loading {handle.ref.path.name} ({handle.ref.format})"):
                handle.runner = self.registry.load(handle.ref, handle.sidecar, device=self.device)
        return handle.runner

    def park(self, keep: ModelHandle | None = None) -> None:
        """Close every framework runner but `keep`'s, their outputs kept (a later `runner` loads
        again): before a large model's IR is loaded or walked (issue 21: a 334M-parameter source's
        torch program and its target's session are 3.1 GB the layer walk never uses)."""
        import gc

        for handle in self.models.values():
            if handle is not keep and handle.runner is not None:
                try:
                    handle.runner.close()
                finally:
                    # close() frees nothing in most plugins (a no-op hook), and a caller may still hold
                    # the runner (check_models does, all through diagnose): emptied, its model goes now
                    if hasattr(handle.runner, "__dict__"):
                        vars(handle.runner).clear()
                    handle.runner = None
        # always, even when nothing was open: a torch program lives in reference cycles, and the last
        # outside reference to one released earlier may have gone only now (measured on bert_large:
        # 1.2 GB held through the walk until a collection)
        gc.collect()
        memory.trim()

    def release(self, handle: ModelHandle) -> None:
        """Close a model the job is done with (a rejected repair candidate), freeing its memory."""
        if handle.runner is not None:
            handle.runner.close()
            handle.runner = None
        handle.outputs.clear()
        self.models = {k: v for k, v in self.models.items() if v is not handle}

    def outputs(self, handle: ModelHandle, dataset: Dataset, indices: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
        """The model's outputs on `dataset[indices]`, computed once per job (sources are asked often),
        in batches sized by memory: the first small batch measures the model's bytes per sample, and
        later batches hold as many samples as the budget allows (at most `batch_size`)."""
        from convrepair.data import feeds_for

        key = (dataset.origin, id(dataset), _indices_key(indices))
        if key not in handle.outputs:
            runner = self.runner(handle)
            subset = dataset.take(np.asarray(indices))
            parts: list[list[np.ndarray]] = []
            start = 0
            with stage(f"running {handle.ref.path.name} on {len(subset)} samples", len(subset)) as progress:
                if handle.bytes_per_sample is None and len(subset) > MEMORY_PROBE:
                    before, peak = memory.rss(), memory.peak()
                    parts.append(list(runner.run(feeds_for(runner.inputs, subset, 0, MEMORY_PROBE)).values()))
                    handle.bytes_per_sample = memory.per_sample(before, peak, MEMORY_PROBE, subset, parts[0])
                    start = MEMORY_PROBE
                    progress.advance(MEMORY_PROBE)
                step = self.batch_for(handle, batch_size)
                for begin in range(start, len(subset), step):
                    end = min(begin + step, len(subset))
                    parts.append(list(runner.run(feeds_for(runner.inputs, subset, begin, end)).values()))
                    progress.advance(end - begin)
            handle.outputs[key] = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
        return handle.outputs[key]

    def batch_for(self, handle: ModelHandle, batch_size: int) -> int:
        """How many samples of this model one batch holds within the job's memory budget."""
        if handle.bytes_per_sample is None:
            return batch_size
        return max(1, min(batch_size, memory.budget(self.memory_mb) // max(handle.bytes_per_sample, 1)))

    def output_names(self, handle: ModelHandle) -> list[str]:
        return [spec.name for spec in self.runner(handle).outputs]

    # --- data -----------------------------------------------------------------------------------

    def dataset(self, key: tuple, make) -> Dataset:
        """The job's data, read once (`make()` builds it the first time it is asked for)."""
        if key not in self.datasets:
            self.datasets[key] = make()
        return self.datasets[key]

    # --- ONNX IR --------------------------------------------------------------------------------

    def onnx_ir(self, handle: ModelHandle, samples: Dataset, options: dict | None = None) -> OnnxIR:
        """The model as ONNX (itself when it is ONNX), had once per job and export options (from
        the IR cache, or exported in a child), its fidelity measured on `samples`."""
        from convrepair.onnx_ir import onnx_ir

        from convrepair import lean_onnx

        key = repr(sorted((options or {}).items()))
        if key not in handle.irs:
            exports = self.exports()
            before = exports.count
            release = None
            if handle.ref.format != "onnx" and lean_onnx.is_large(handle.ref.path):  # one large model at a time
                self.park(keep=handle)
                release = self.park
            handle.irs[key] = onnx_ir(self.registry, handle.ref, handle.sidecar, lambda: self.runner(handle), samples,
                                      self.workdir, options, exports, release)
            if release is not None:
                self.park()  # the released program and the IR's session are collected now, not at some later gc
            self.counts["export"] += exports.count - before
        return handle.irs[key]

    def prepare_ir(self, handle: ModelHandle, options: dict | None = None) -> str:
        """Have the model's IR ready (cached, or exported now) before any model is loaded; how it was
        had ("cached", "child process", "in process", "as is" for ONNX). Uncontained, the export's
        peak comes and goes in a child before the check's begins; in a contained worker it is the
        worker's own (`ir_export`: call `export_ahead` before starting the worker instead).
        Fidelity waits for `onnx_ir`, which has the samples."""
        from convrepair.onnx_ir import exported_file

        if handle.ref.format == "onnx":
            return "as is"
        exports = self.exports()
        before = exports.count
        _, how = exported_file(self.registry, handle.ref, handle.sidecar, options, exports, self.workdir)
        self.counts["export"] += exports.count - before
        return how

    def exports(self) -> Exports:
        """The IRs this job had (and where it keeps them across jobs)."""
        if self._exports is None:
            from convrepair.onnx_ir import Exports

            self._exports = Exports(self.ir_cache)
        return self._exports

    def graph(self, path: str | Path) -> tuple[Any, GraphView]:
        """An ONNX file parsed once: (ModelProto, GraphView). Treat both as read-only.

        A large one (`lean_onnx.LEAN_BYTES`) is parsed without its weights, from its lean form in
        the job's folder (written there once unless it already is), its parameters read from the
        data file when asked; and the framework runners are closed first, since what asks for a
        graph walks the IRs, not the models. Its proto runs only through `lean_onnx.session`."""
        import onnx

        from convrepair import lean_onnx
        from convrepair.localize.graph import GraphView

        key = str(Path(path).resolve())
        if key not in self.graphs:
            if lean_onnx.is_large(Path(path)):
                self.park()
                proto = lean_onnx.load(self._lean_file(Path(path)))
            else:
                proto = onnx.load(str(path))
            self.graphs[key] = (proto, GraphView(proto))
        return self.graphs[key]

    def _lean_file(self, path: Path) -> Path:
        """The large ONNX file itself when it is lean already in this job's folder, else its lean copy there."""
        from convrepair import lean_onnx

        resolved = path.resolve()
        if resolved.is_relative_to(self.workdir.resolve()) and resolved.with_name(resolved.name + ".data").is_file():
            return resolved  # lean_onnx.write made it (onnx_ir's own copy of a large IR)
        return lean_onnx.write(resolved, Path(tempfile.mkdtemp(dir=self.workdir)), resolved.name)

    def forget_graph(self, path: str | Path) -> None:
        self.graphs.pop(str(Path(path).resolve()), None)

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        for handle in self.models.values():
            if handle.runner is not None:
                try:
                    handle.runner.close()
                finally:
                    handle.runner = None
        self.models.clear()
        self.datasets.clear()
        self.graphs.clear()
        self.cache.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> JobContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_key(path: Path) -> tuple:
    """A model file's identity within a job: where it is and its stat (a rewritten file is new)."""
    resolved = path.resolve()
    try:
        stat = resolved.stat()
        return (str(resolved), stat.st_mtime_ns, stat.st_size)
    except OSError:
        return (str(resolved),)


def _indices_key(indices: np.ndarray) -> str:
    array = np.ascontiguousarray(np.asarray(indices, dtype=np.int64))
    return hashlib.sha1(array.tobytes()).hexdigest()


def opened(job: JobContext | None, registry: PluginRegistry):
    """`job` itself (the caller closes it), or a fresh context this call owns and closes."""
    import contextlib

    if job is not None:
        return contextlib.nullcontext(job)
    return JobContext(registry)
