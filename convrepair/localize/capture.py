"""Activation capture for ONNX: intermediate tensors become extra graph outputs.

Marking every tensor of a large model at once costs memory in proportion to the whole network
(MobileNetV2 at 96×96, 64 images: 825 MB), so `sweep` runs every tensor at once over a few
samples at a time (one session, one pass over the data), and `capture` asks for a few tensors
of the whole batch when only those are needed; `segment` runs one piece of a graph on its own.
A large model comes here in its lean form (`convrepair.lean_onnx`: the graph without its weights):
its sessions are built from a file beside its weights, never from a serialized copy of them.
"""

from __future__ import annotations

import numpy as np

from convrepair import lean_onnx


def probe(model, names: list[str], feeds: dict[str, np.ndarray], optimize: bool = False):
    """One session asking for `names`: a function of a sample span (start, stop) → {name: float32
    value} on those samples (axis 0 of every feed). Op by op (tensors kept as named) unless
    `optimize`: then as the runner runs the model (fused kernels)."""
    session = lean_onnx.session(model, names, optimize=optimize)
    wanted = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in wanted}

    def run(start: int, stop: int) -> dict[str, np.ndarray]:
        part = {k: v[start:stop] for k, v in feeds.items()}
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(names, session.run(names, part))}

    return run


def sweep(model, names: list[str], feeds: dict[str, np.ndarray], batch: int):
    """Every tensor of `names` for `batch` samples at a time: one session, one pass over the samples.
    Yields {name: float32 value} per batch of samples (axis 0 of every feed)."""
    run = probe(model, names, feeds)
    total = len(next(iter(feeds.values()))) if feeds else 0
    for start in range(0, total, batch):
        yield run(start, min(start + batch, total))


def capture(model, names: list[str], feeds: dict[str, np.ndarray], chunk: int = 8) -> dict[str, np.ndarray]:
    """Values of `names` for one batch, computed `chunk` tensors per run; returned as float32."""
    values: dict[str, np.ndarray] = {}
    for start in range(0, len(names), chunk):
        part = names[start : start + chunk]
        session = lean_onnx.session(model, part)
        wanted = {i.name for i in session.get_inputs()}
        for name, value in zip(part, session.run(part, {k: v for k, v in feeds.items() if k in wanted})):
            values[name] = np.asarray(value, dtype=np.float32)
    return values


def segment(model, input_name: str, output_name: str):
    """Shadow mode: the target's segment `input_name → output_name` alone, as a function of that
    input (float32 in, float32 out; built once, run a batch at a time). None when the segment
    depends on more than that input and its parameters; the function returns None where it fails."""
    import onnx
    from onnx.utils import Extractor

    try:
        inferred = onnx.shape_inference.infer_shapes(model)  # the extractor needs value_info
        sub = Extractor(inferred).extract_model([input_name], [output_name])
        home = lean_onnx.home_of(model)
        if home is not None and lean_onnx.home_of(sub) is None:  # a piece of a lean model: its weights are in the model's folder
            sub.metadata_props.add(key=lean_onnx.HOME, value=str(home))
        session = lean_onnx.session(sub, optimize=True)
        dtype = np.float16 if "float16" in session.get_inputs()[0].type else np.float32
    except Exception:  # noqa: BLE001 - extraction fails for segments with other live inputs
        return None

    def run(value: np.ndarray) -> np.ndarray | None:
        try:
            return np.asarray(session.run([output_name], {input_name: value.astype(dtype)})[0], dtype=np.float32)
        except Exception:  # noqa: BLE001 - a segment that cannot run on this input
            return None

    return run

