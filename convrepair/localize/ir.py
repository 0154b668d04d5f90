"""The common IR for localization: ONNX, as FetaFix compares the two models' ONNX exports.

A model that is not ONNX is converted along a lossless route; the IR is only trusted after its
outputs are shown to match the model it stands for on the localization samples.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convrepair.data import Dataset
from convrepair.errors import BadInput
from convrepair.sidecar import Sidecar

if TYPE_CHECKING:
    from convrepair.job import JobContext, ModelHandle


@dataclass
class OnnxIR:
    path: Path
    origin: str  # "as is" or the converter route
    fidelity_max_abs: float  # IR vs the model it stands for, on the localization samples
    layouts: list[str]
    fidelity_rel_l2: float = 0.0  # the same, as ||model − IR|| / ||model|| (worst output)


def export_options(sidecar: Sidecar | None) -> dict:
    """Options of the last step that wrote ONNX, so the other model is exported the same way; with
    the exporter that step ended up using (a default that fell back from TorchScript to dynamo
    need not fail again on the source)."""
    for step in reversed(sidecar.steps if sidecar else []):
        if step.output_format == "onnx" and step.source_format != "onnx":
            chosen = {"exporter": step.details["exporter"]} if "exporter" in (step.details or {}) else {}
            return chosen | dict(step.options)
    return {}


def to_onnx_ir(job: JobContext, handle: ModelHandle, dataset: Dataset, workdir: Path, options: dict | None = None) -> OnnxIR:
    """Use `JobContext.onnx_ir`, which calls this once per model and export options."""
    ref, sidecar = handle.ref, handle.sidecar
    layouts = list(sidecar.input_layout) if sidecar and sidecar.input_layout else []
    if ref.format == "onnx":
        return OnnxIR(ref.path, "as is", 0.0, layouts)
    from convrepair.compare import compare_on
    from convrepair.convert import convert, plan_route

    try:
        plan_route(job.registry, ref.format, "onnx")
    except BadInput:  # a runtime format with no way back to ONNX (OpenVINO IR): say what the check still is
        raise BadInput(f"output-level only: no lossless route from {ref.format} to ONNX, the IR of the layer-wise "
                       "view; the outputs were compared, no layer was", ref.path) from None
    try:
        result = convert(job.registry, ref, "onnx", out=Path(tempfile.mkdtemp(dir=workdir)) / "ir.onnx", options=options)
    except Exception as exc:  # noqa: BLE001 - no IR means no layer-wise view, said plainly
        raise BadInput(f"cannot bring this {ref.format} model to ONNX for localization: {exc}", ref.path) from None
    with job.registry.load(result.output, None, device="cpu") as ir:
        comparison = compare_on(job.runner(handle), ir, dataset, np.arange(len(dataset)))
    rel_l2 = max((float(np.sqrt(o.noise_energy / o.signal_energy)) if o.signal_energy > 0 else float(o.noise_energy > 0))
                 for o in comparison.outputs)
    return OnnxIR(result.output.path, " → ".join(result.route), comparison.max_abs, layouts, rel_l2)
