"""Recognise ONNX files by content and run them with ONNX Runtime (CUDA when present)."""

from __future__ import annotations

from pathlib import Path

from convrepair.errors import BadInput, exception_text
from convrepair.model import Runner, TensorSpec, conform_feeds, input_layouts
from convrepair.plugins import LoadRequest
from convrepair_plugins.onnx import PLUGIN

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def looks_like_onnx(path: Path) -> bool:
    """ModelProto starts with field 1 (ir_version, a small varint): bytes 0x08, 1..20."""
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x08 and 1 <= head[1] <= 20


def load_onnx_model(path: Path):
    """Parse and check an ONNX file; any failure is a one-line `BadInput` naming it."""
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - protobuf/checker errors have many types
        text = exception_text(exc, 200)
        raise BadInput(f"is not a valid ONNX model (truncated or corrupt?): {text}", path) from None
    return model


def session_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: Path, layouts: list[str], device: str = "auto", model_bytes: bytes | None = None):
        import onnxruntime as ort

        self.path = path
        options = ort.SessionOptions()
        options.log_severity_level = 3
        source = model_bytes if model_bytes is not None else str(path)
        try:
            self.session = ort.InferenceSession(source, options, providers=session_providers(device))
        except Exception as exc:  # noqa: BLE001
            text = exception_text(exc, 200)
            raise BadInput(f"is not a valid ONNX model (truncated or corrupt?): ONNX Runtime cannot load it: {text}", path) from None
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        metas = self.session.get_inputs()
        resolved = input_layouts(layouts, [_shape(meta.shape) for meta in metas])
        self.inputs = [
            TensorSpec(meta.name, _shape(meta.shape), _ORT_DTYPES.get(meta.type, "float32"), resolved[i])
            for i, meta in enumerate(metas)
        ]
        self.outputs = [
            TensorSpec(meta.name, _shape(meta.shape), _ORT_DTYPES.get(meta.type, "float32"))
            for meta in self.session.get_outputs()
        ]
        self._largest = 0  # the largest batch run so far: the arena has grown to it
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, feeds):
        feeds = conform_feeds(self.inputs, feeds, self.path)
        batch = _batch_of(feeds)
        # The arena keeps what the largest batch grew it to. A run smaller than that (the tail of a
        # series of batches, a single sample) gives it back; equal batches reuse it (issue 21:
        # shrinking every run costs ~7% CPU re-faulting the pages).
        shrink = 0 < batch < self._largest
        self._largest = max(self._largest, batch)
        try:
            values = self.session.run(None, feeds, self._shrink if shrink else None)
        except Exception as exc:  # noqa: BLE001 - e.g. a shape the graph cannot compute
            text = exception_text(exc, 240)
            raise BadInput(f"ONNX Runtime fails to run this model on the given inputs: {text}", self.path) from None
        return {spec.name: value for spec, value in zip(self.outputs, values)}


def _batch_of(feeds) -> int:
    shapes = [getattr(value, "shape", ()) for value in feeds.values()]
    return max((int(shape[0]) for shape in shapes if len(shape)), default=0)


def _shape(dims) -> tuple[int | None, ...]:
    return tuple(dim if isinstance(dim, int) and dim > 0 else None for dim in dims)


@PLUGIN.format("onnx", description="ONNX model (.onnx)", suffix=".onnx", detect=looks_like_onnx)
def load(request: LoadRequest) -> Runner:
    # ONNX Runtime parses and validates the file itself; parsing it with onnx too would double the cost.
    return OnnxRuntimeRunner(request.ref.path, request.declared_layouts, request.device)
