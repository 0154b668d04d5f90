"""A converted ONNX file must load in ONNX Runtime before it is kept: a type error found later
(at check time) would leave an invalid model on disk with a sidecar that vouches for it."""

from __future__ import annotations

from pathlib import Path


def assert_loads(path: Path, what: str) -> None:
    """Raise RuntimeError (one line) when ONNX Runtime refuses the file."""
    import onnxruntime as ort

    from convrepair.errors import exception_text

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # loading is the check
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several types
        raise RuntimeError(f"the {what} model does not load in ONNX Runtime: {exception_text(exc, 240)}") from None
