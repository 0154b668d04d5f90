"""A model's ONNX IR, the common ground on which localization compares two models (as FetaFix
compares their ONNX exports): the model itself when it is ONNX, else its export along a lossless
route — taken from the IR cache when that export was made before (`ircache`; `ir_export.export_ahead`
makes it before a check's worker starts), else made now (`ir_export`) and kept there.

Wherever it came from, an IR is only trusted after its outputs are shown to match the model it
stands for on the samples at hand (its fidelity, measured here on every call): a cache hit is a
candidate, never a verdict. This module sits below `job` and imports nothing above it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convrepair import ircache
from convrepair.errors import BadInput
from convrepair.events import stage

if TYPE_CHECKING:
    from convrepair.data import Dataset
    from convrepair.model import ModelRef, Runner
    from convrepair.plugins import PluginRegistry
    from convrepair.sidecar import Sidecar


@dataclass
class OnnxIR:
    path: Path
    origin: str  # "as is" or the converter route
    fidelity_max_abs: float  # IR vs the model it stands for, on the localization samples
    layouts: list[str]
    fidelity_rel_l2: float = 0.0  # the same, as ||model − IR|| / ||model|| (worst output)
    exported: str = ""  # "cached", or where this job's export ran ("child process", "in process")


@dataclass
class Exports:
    """What a job knows of IRs beyond one call: the cache folder and the IRs it had, by key (its own
    exports serve the job when the cache is off or read-only)."""

    cache: Path | None
    made: dict[str, tuple[ircache.Entry, str]] | None = None  # by key: (entry, how it was had)
    count: int = 0  # exports this job ran (cache hits are none)

    def __post_init__(self) -> None:
        self.made = {} if self.made is None else self.made


def exported_file(registry: PluginRegistry, ref: ModelRef, sidecar: Sidecar | None, options: dict | None,
                  exports: Exports, workdir: Path) -> tuple[ircache.Entry, str]:
    """The IR file of a non-ONNX model (no fidelity yet): (entry, how it was had). The export runs
    only when neither this job nor the cache has it; it is then kept in the cache."""
    from convrepair.convert import plan_route

    try:
        route = plan_route(registry, ref.format, "onnx")
    except BadInput:  # a runtime format with no way back to ONNX (OpenVINO IR): say what the check still is
        raise BadInput(f"output-level only: no lossless route from {ref.format} to ONNX, the IR of the layer-wise "
                       "view; the outputs were compared, no layer was", ref.path) from None
    key = ircache.key_of(registry, ref, sidecar, route, options)
    if key in exports.made:
        return exports.made[key]
    entry = ircache.lookup(exports.cache, key)
    if entry is not None:
        exports.made[key] = (entry, "cached")
        return exports.made[key]
    from convrepair.ir_export import convert_in_child

    folder = Path(tempfile.mkdtemp(dir=workdir))
    with stage(f"exporting {ref.path.name} to ONNX"):
        try:
            made = convert_in_child(ref.path, "onnx", folder / "ir.onnx", fmt=ref.format, options=options)
        except Exception as exc:  # noqa: BLE001 - no IR means no layer-wise view, said plainly
            text = getattr(exc, "message", None) or str(exc)
            raise BadInput(f"cannot bring this {ref.format} model to ONNX for localization: {text}", ref.path) from None
    exports.count += 1
    meta = {"route": made.route, "where": made.where, "lean": made.lean}
    kept = ircache.store(exports.cache, key, [made.output.parent / name for name in made.files], made.output, meta)
    exports.made[key] = (kept or ircache.Entry(made.output, meta), made.where)
    return exports.made[key]


def onnx_ir(registry: PluginRegistry, ref: ModelRef, sidecar: Sidecar | None, runner: Callable[[], Runner],
            samples: Dataset, workdir: Path, options: dict | None, exports: Exports,
            release: Callable[[], None] | None = None) -> OnnxIR:
    """The model's IR as a file of its own in `workdir`, with its fidelity on `samples`. With
    `release` (a large model), the model's outputs are computed first, `release()` closes what
    the caller wants closed (its runner), and only then is the IR loaded: never both at once.
    A large IR is kept in its lean form (`lean_onnx`: graph file + one data file)."""
    from convrepair.compare import compare_on
    from convrepair.model import model_ref

    layouts = list(sidecar.input_layout) if sidecar and sidecar.input_layout else []
    if ref.format == "onnx":
        return OnnxIR(ref.path, "as is", 0.0, layouts)
    entry, how = exported_file(registry, ref, sidecar, options, exports, workdir)
    path = _own_copy(entry.path, workdir)  # the IR may be edited (repair); the cache's copy never is
    if release is None:
        with registry.load(model_ref(path, registry, "onnx"), None, device="cpu") as ir:
            comparison = compare_on(runner(), ir, samples, np.arange(len(samples)))
    else:
        comparison = _one_after_the_other(registry, runner(), path, samples, release)
    rel_l2 = max((float(np.sqrt(o.noise_energy / o.signal_energy)) if o.signal_energy > 0 else float(o.noise_energy > 0))
                 for o in comparison.outputs)
    return OnnxIR(path, " → ".join(entry.meta.get("route", [])), comparison.max_abs, layouts, rel_l2, how)


def _one_after_the_other(registry: PluginRegistry, model: Runner, path: Path, samples: Dataset, release: Callable[[], None]):
    """compare_on's Comparison, the model's outputs computed and the model released before the IR loads."""
    from convrepair.compare import compare_outputs
    from convrepair.data import batches, feeds_for
    from convrepair.model import model_ref

    spans = list(batches(len(samples), 256))
    expected = [model.run(feeds_for(model.inputs, samples, start, stop)) for start, stop in spans]
    release()
    with registry.load(model_ref(path, registry, "onnx"), None, device="cpu") as ir:
        outputs = ((np.arange(start, stop), s_out, ir.run(feeds_for(ir.inputs, samples, start, stop)),
                    samples.labels[start:stop] if samples.labels is not None else None)
                   for (start, stop), s_out in zip(spans, expected))
        return compare_outputs(model, ir, outputs)


def _own_copy(path: Path, workdir: Path) -> Path:
    """A copy of the IR (and its external data) in a fresh folder of `workdir`; a large one in its
    lean form (written once, streamed: never a whole proto in memory)."""
    from convrepair import lean_onnx

    if path.is_relative_to(workdir):
        return path
    folder = Path(tempfile.mkdtemp(dir=workdir))
    if lean_onnx.is_large(path):
        return lean_onnx.write(path, folder, path.name)
    for companion in path.parent.iterdir():
        if companion.is_file() and companion.name.startswith(path.name) and not companion.name.endswith(".json"):
            shutil.copy2(companion, folder / companion.name)
    return folder / path.name

