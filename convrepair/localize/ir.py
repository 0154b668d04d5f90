"""The common IR for localization: ONNX, as FetaFix compares the two models' ONNX exports.

How an IR is had (cache, export in a child, fidelity) is `convrepair.onnx_ir`'s, below the job;
what localization adds is which export options make the source's IR comparable to the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from convrepair.onnx_ir import OnnxIR, onnx_ir
from convrepair.sidecar import Sidecar

if TYPE_CHECKING:
    from convrepair.data import Dataset
    from convrepair.job import JobContext, ModelHandle

__all__ = ["OnnxIR", "export_options", "to_onnx_ir"]


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
    """The IR as a file in `workdir` (it outlives the job); within a job use `JobContext.onnx_ir`."""
    return onnx_ir(job.registry, handle.ref, handle.sidecar, lambda: job.runner(handle), dataset, Path(workdir), options,
                   job.exports())
