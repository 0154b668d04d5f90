"""Run a litert-torch .tflite with LiteRT's own interpreter (`ai_edge_litert`), batch by batch.

litert-torch fixes the batch it was given (a dynamic batch fails in its lowering of `Flatten`/`view`,
docs/FOUND.md), and a fixed-batch flatbuffer cannot be resized (XNNPACK fails to re-plan its
reshapes), so the runner runs a larger batch in pieces of the model's own batch. A flatbuffer is
taken for this format when its sidecar says litert-torch wrote it; any other .tflite stays with the
tensorflow plugin's runner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convrepair.errors import BadInput, exception_text
from convrepair.model import Runner, TensorSpec, conform_feeds, input_layouts
from convrepair.plugins import LoadRequest
from convrepair_plugins.litert import PLUGIN

FORMAT = "litert"


def is_litert(path: Path) -> bool:
    from convrepair.sidecar import read_sidecar
    from convrepair_plugins.tensorflow.runners import is_tflite

    if not is_tflite(path):
        return False
    try:
        sidecar = read_sidecar(path)
    except BadInput:
        return False
    return bool(sidecar and sidecar.steps and sidecar.steps[-1].output_format == FORMAT)


class LiteRTRunner(Runner):
    """`ai_edge_litert.interpreter.Interpreter` at the flatbuffer's own (fixed) input shapes."""

    def __init__(self, path: Path, layouts: list[str]):
        from ai_edge_litert.interpreter import Interpreter

        from convrepair_plugins.tensorflow.quiet import stderr_fd_silenced
        from convrepair_plugins.tensorflow.runners import io_quantization

        self.path = path
        try:
            with stderr_fd_silenced():  # "Created TensorFlow Lite XNNPACK delegate" chatter
                self.interpreter = Interpreter(model_path=str(path))
                self.interpreter.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - the runtime's own words, on one line
            raise BadInput(f"is not a loadable LiteRT model: {exception_text(exc, 200)}", path) from None
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        self._in_q = [io_quantization(d, path) for d in self._in]
        self._out_q = [io_quantization(d, path) for d in self._out]
        self.capacity = int(self._in[0]["shape"][0]) if self._in and len(self._in[0]["shape"]) else 1
        shapes = [(None, *(int(v) for v in d["shape"][1:])) if len(d["shape"]) else () for d in self._in]
        resolved = input_layouts(layouts, shapes)
        self.inputs = [TensorSpec(d["name"], shapes[i], "float32" if q else np.dtype(d["dtype"]).name, resolved[i])
                       for i, (d, q) in enumerate(zip(self._in, self._in_q))]
        self.outputs = [TensorSpec(d["name"], (None, *(int(v) for v in d["shape"][1:])),
                                   "float32" if q else np.dtype(d["dtype"]).name)
                        for d, q in zip(self._out, self._out_q)]
        self.device = "cpu"

    def run(self, feeds):
        feeds = conform_feeds(self.inputs, feeds, self.path)
        arrays = [feeds[spec.name] for spec in self.inputs]
        batch = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
        step = max(1, self.capacity)
        parts = [self._run([a[start:start + step] for a in arrays]) for start in range(0, batch, step)]
        return {spec.name: np.concatenate([p[i] for p in parts]) for i, spec in enumerate(self.outputs)}

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        count = arrays[0].shape[0]
        if count < self.capacity:  # the last piece: pad to the fixed batch, keep its own rows
            arrays = [np.concatenate([a, np.repeat(a[-1:], self.capacity - count, axis=0)]) for a in arrays]
        for detail, value, q in zip(self._in, arrays, self._in_q):
            self.interpreter.set_tensor(detail["index"], q.quantize(value) if q else np.ascontiguousarray(value))
        self.interpreter.invoke()
        values = []
        for detail, q in zip(self._out, self._out_q):
            value = self.interpreter.get_tensor(detail["index"])
            values.append((q.dequantize(value) if q else value.copy())[:count])
        return values


@PLUGIN.format(FORMAT, description="LiteRT flatbuffer written by litert-torch (.tflite with its sidecar)",
               suffix=".tflite", detect=is_litert)
def load_litert(request: LoadRequest) -> Runner:
    return LiteRTRunner(request.ref.path, request.declared_layouts)
