"""Recognise ExecuTorch programs by their flatbuffer identifier and run their `forward` method.

An ExecuTorch program plans its memory at export time: every input has a capacity (the upper bound
of its dynamic batch), and a larger batch is refused by the runtime. The runner reads that capacity
from the method's metadata and runs a larger batch in pieces that fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convrepair.errors import BadInput, exception_text
from convrepair.model import Runner, TensorSpec, conform_feeds, input_layouts
from convrepair.plugins import LoadRequest
from convrepair_plugins.executorch import PLUGIN
from convrepair_plugins.executorch.quiet import quiet

# c10::ScalarType codes, as MethodMeta reports tensor dtypes
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                7: "float64", 11: "bool", 15: "bfloat16"}


def is_pte(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(8)
    return len(head) == 8 and head[4:6] == b"ET" and head[6:8].isdigit()  # "ET12": program schema 12


class ExecuTorchRunner(Runner):
    """`forward` of a .pte, through `executorch.runtime`; the batch axis is taken as dynamic."""

    def __init__(self, path: Path, layouts: list[str]):
        import torch

        with quiet():
            from executorch.runtime import Runtime

        self.path, self._torch = path, torch
        try:
            with quiet():  # the XNNPACK delegate probes the CPU as its method loads
                program = Runtime.get().load_program(path)
                if "forward" not in program.method_names:
                    raise ValueError(f"no 'forward' method (has {sorted(program.method_names)})")
                self.method = program.load_method("forward")
        except Exception as exc:  # noqa: BLE001 - the runtime's own words, on one line
            raise BadInput(f"is not a loadable ExecuTorch program: {type(exc).__name__}: {exception_text(exc, 200)}", path) from None
        self._program = program
        meta = self.method.metadata
        ins = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
        outs = [meta.output_tensor_meta(i) for i in range(meta.num_outputs())]
        self.capacity = min((tuple(t.sizes())[0] for t in ins if tuple(t.sizes())), default=None)
        shapes = [(None, *tuple(t.sizes())[1:]) if tuple(t.sizes()) else () for t in ins]
        resolved = input_layouts(layouts, shapes)
        self.inputs = [TensorSpec(f"input_{i}", shape, _dtype(t), resolved[i]) for i, (t, shape) in enumerate(zip(ins, shapes))]
        self.outputs = [TensorSpec(f"output_{i}", (None, *tuple(t.sizes())[1:]), _dtype(t)) for i, t in enumerate(outs)]
        self.device = "cpu"

    def run(self, feeds):
        feeds = conform_feeds(self.inputs, feeds, self.path)
        arrays = [np.ascontiguousarray(feeds[spec.name]) for spec in self.inputs]
        batch = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
        step = max(1, self.capacity or batch)
        parts = [self._run([a[start:start + step] for a in arrays]) for start in range(0, max(batch, 1), step)]
        return {spec.name: np.concatenate([p[i] for p in parts]) for i, spec in enumerate(self.outputs)}

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with quiet():  # cpuinfo probing on the first run, resize errors (raised to us as well)
            values = self.method.execute([torch.from_numpy(a) for a in arrays])
        return [v.detach().numpy().copy() if hasattr(v, "detach") else np.asarray(v) for v in values]


def _dtype(meta) -> str:
    return SCALAR_TYPES.get(int(meta.dtype()), "float32")


@PLUGIN.format("pte", description="ExecuTorch program (.pte)", suffix=".pte", detect=is_pte)
def load_pte(request: LoadRequest) -> Runner:
    return ExecuTorchRunner(request.ref.path, request.declared_layouts)
