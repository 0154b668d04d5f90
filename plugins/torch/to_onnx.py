"""PyTorch (.pt2 / TorchScript) -> ONNX with torch.onnx, proven at two input sizes before it is kept.

Exporters: `torchscript` (the tracer) and `dynamo` (torch.export-based, needs onnxscript).
Default: torchscript, then dynamo. Every dimension the source declares dynamic (batch, sequence
length, ...) is exported dynamic, and the exported file is run in ONNX Runtime against the source
at two sizes of each dynamic dimension; an export that bakes the example's shape in (a tracer
writing `{2, 32, 12, 32}` into a transformer's Reshape) fails that check and the next exporter is
tried. Measured on the fixture CNN: torchscript 0.13 s, opset 17, and onnx2torch reads its
output back; dynamo 2.3 s, opset 20 with a `Gelu` node that onnx2torch 1.5 cannot convert.
The sidecar records which exporter ran and the sizes it was proven at.

Memory (issue 21, a 334M-parameter BERT-large .pt2, 1.34 GB of weights): the dynamo exporter's own
`save` serializes one in-memory proto of every weight (peak 5.8 GB, the exporter alone); here it
writes external data (tensor by tensor) and the single .onnx is streamed from it, one initializer
at a time (peak 1.75 GB for export + save). Sources of more than `LARGE_SOURCE_BYTES` of weights
try dynamo first: the TorchScript exporter also builds one in-memory proto (and, where the
program's view/reshape sizes come from a dynamic batch, bakes them in and fails the proof).
The proof's ONNX Runtime session neither prepacks weights nor keeps an arena: it runs two tiny
batches, and a prepacked copy of every MatMul weight would add the model's size again.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from convrepair.errors import BadInput, exception_text
from convrepair.plugins import ConvertNotes, ConvertRequest
from convrepair_plugins.torch import PLUGIN

DEFAULT_OPSET = 17
DYNAMO_OPSET = 18  # the dynamo exporter's own opset: asking it for 17 runs a down-converter that fails on Reduce ops
# Two sizes for every dynamic dimension: the example the exporter sees, and a probe it did not.
EXAMPLE_BATCH, PROBE_BATCH = 2, 3
EXAMPLE_OTHER, PROBE_OTHER = 16, 11
LARGE_SOURCE_BYTES = 1 << 30  # weights past this: dynamo first (see the module docstring)
PROTOBUF_LIMIT = (2 << 30) - (64 << 20)  # one .onnx file holds at most 2 GiB (protobuf), less a margin for the graph


@PLUGIN.converter(
    "torch-to-onnx",
    sources=["pt2", "torchscript"],
    target="onnx",
    description="torch.onnx export (dynamo or TorchScript exporter), dynamic shapes proven at two sizes",
    options={
        "exporter": "torchscript | dynamo (default torchscript, dynamo when its output fails the check)",
        "opset": "ONNX opset (default 17; 18 for the dynamo exporter)",
        "fold_constants": "true | false: fold BatchNorm into Conv and other constants (torchscript exporter, default true)",
    },
)
def torch_to_onnx(request: ConvertRequest) -> ConvertNotes:
    import warnings

    import torch

    from convrepair_plugins.torch.runner import exported_dynamic_dims, exported_input_specs
    from convrepair_plugins.torch.safe_load import load_exported_program, load_torchscript

    path = request.source.path
    opset_given = request.options.get("opset")
    dims = None
    if request.source.format == "pt2":
        program = load_exported_program(path)
        specs = exported_input_specs(program)
        dims = exported_dynamic_dims(program)
        large = sum(t.numel() * t.element_size() for t in program.state_dict.values()) > LARGE_SOURCE_BYTES
        default_order = ["dynamo", "torchscript"] if large else ["torchscript", "dynamo"]
        module: Any = program
    else:
        module, declared = load_torchscript(path)
        if not declared:
            raise BadInput(
                "TorchScript model declares no input shapes; save it with "
                "_extra_files={'convrepair_inputs.json': ...} or export it with torch.export (.pt2)",
                path,
            )
        specs = [(d["name"], tuple(d["shape"]), d.get("dtype", "float32")) for d in declared]
        default_order = ["torchscript"]
    requested = request.options.get("exporter")
    order = [requested] if requested else default_order
    if "dynamo" in order and importlib.util.find_spec("onnxscript") is None:
        if requested == "dynamo":
            raise BadInput("the dynamo exporter needs the 'onnxscript' package (pip install onnxscript)")
        order = [o for o in order if o != "dynamo"]
    names = [name for name, _, _ in specs]
    example = _inputs(specs, dims, probe=False, seed=0)
    probe = _inputs(specs, dims, probe=True, seed=1)
    dynamic = {name: [i for i, d in enumerate(shape) if d is None] for name, shape, _ in specs}
    fold = str(request.options.get("fold_constants", "true")).lower() != "false"
    callable_module = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    errors: dict[str, str] = {}
    last: Exception | None = None
    for exporter in order:
        opset = int(opset_given or (DYNAMO_OPSET if exporter == "dynamo" else DEFAULT_OPSET))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _export(module, example, names, dynamic, str(request.output), exporter, opset, fold)
            proven = _prove(callable_module, str(request.output), names, [example, probe])
            break
        except Exception as exc:  # noqa: BLE001 - try the next exporter, report all failures
            errors[exporter] = f"{type(exc).__name__}: {_plain(exception_text(exc, 2000))[:300]}"
            last = exc
            request.output.unlink(missing_ok=True)
            for extra in request.output.parent.glob(request.output.name + "*.data"):
                extra.unlink()
            _release()  # what the failed exporter held is not kept under the next one's peak
    else:  # every exporter refused this model (or its export failed the proof): the user's to act on
        reasons = "; ".join(f"{k} exporter: {v}" for k, v in errors.items())
        raise BadInput(f"torch.onnx cannot export this model: {reasons}", path) from last
    versions = {"torch": torch.__version__}
    if exporter == "dynamo":
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    return ConvertNotes(
        tool=f"torch.onnx ({exporter} exporter)",
        tool_versions=versions,
        output_format="onnx",
        details={"exporter": exporter, "opset": opset, "fold_constants": fold, "fallback_from": errors or None,
                 "dynamic_dims": {k: v for k, v in dynamic.items() if v}, "proven_at_shapes": proven},
    )


def _inputs(specs, dims, probe: bool, seed: int) -> tuple:
    """Inputs at the example (or probe) size of every dynamic dimension, within its declared range.

    Sizes are chosen per symbol of the exported program (`dims`), so inputs sharing a `Dim` get the
    same size and a derived `Dim` (2*n) its derived size; TorchScript sources declare none (None).
    Floats are standard normal; integers are 0/1 (a valid index of any embedding, a valid mask)."""
    import numpy as np
    import torch

    def wanted(_symbol, axis: int) -> int:
        return (PROBE_BATCH if probe else EXAMPLE_BATCH) if axis == 0 else (PROBE_OTHER if probe else EXAMPLE_OTHER)

    sizes = dims.sizes(wanted) if dims is not None else [[None] * len(shape) for _, shape, _ in specs]
    rng = np.random.default_rng(seed)
    out = []
    for i, (_, shape, dtype) in enumerate(specs):
        shape_now = [d if d is not None else (sizes[i][axis] or wanted(None, axis)) for axis, d in enumerate(shape)]
        if dtype.startswith(("int", "uint", "bool")):
            array = rng.integers(0, 2, size=shape_now).astype(dtype)
        else:
            array = rng.standard_normal(shape_now).astype(dtype)
        out.append(torch.from_numpy(array))
    return tuple(out)


def _plain(text: str) -> str:
    """torch.onnx colours its messages with ANSI escapes and wraps the cause in advice on filing
    an issue: the cause alone, on one plain line."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    summary = text.partition("## Exception summary")[2]
    return " ".join(summary.replace("(Refer to the full stack trace above for more information.)", "").split()) or text


def _prove(module, output: str, names: list[str], cases: list[tuple]) -> list[list[list[int]]]:
    """Run the exported file in ONNX Runtime against the source at every case's shapes."""
    import numpy as np
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing case is expected here (the next exporter is tried): no log
    options.enable_cpu_mem_arena = False  # two tiny batches: no arena, no prepacked copy of the weights
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(output, options, providers=["CPUExecutionProvider"])
    feeds_names = [i.name for i in session.get_inputs()]
    if len(feeds_names) != len(names):
        raise RuntimeError(f"the export has {len(feeds_names)} inputs, the source {len(names)}")
    shapes = []
    for case in cases:
        with torch.no_grad():
            expected = module(*case)
        expected = [t.detach().numpy() for t in (expected if isinstance(expected, (list, tuple)) else [expected])]
        try:
            got = session.run(None, {n: t.numpy() for n, t in zip(feeds_names, case)})
        except Exception as exc:  # noqa: BLE001 - ORT's many error types: the export cannot run at these shapes
            raise RuntimeError(f"at input shapes {[list(t.shape) for t in case]} the export does not run in ONNX Runtime "
                               f"(shapes baked in?): {exception_text(exc, 160)}") from None
        for want, have in zip(expected, got):
            if want.shape != have.shape:
                raise RuntimeError(f"at input shapes {[list(t.shape) for t in case]} the export gives {list(have.shape)}, "
                                   f"the source {list(want.shape)}")
            scale = float(np.abs(want).max()) or 1.0
            if not np.allclose(have, want, rtol=1e-3, atol=1e-3 * scale):
                raise RuntimeError(f"at input shapes {[list(t.shape) for t in case]} the export differs from the source "
                                   f"by up to {float(np.abs(have - want).max()):.3g}")
        shapes.append([list(t.shape) for t in case])
    return shapes


def _export(module, example, names, dynamic, output: str, exporter: str, opset: int, fold: bool) -> None:
    import torch

    if exporter == "dynamo":
        import contextlib
        import io
        import logging

        program = module if isinstance(module, torch.export.ExportedProgram) else torch.export.export(module, example)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # opset upgrade chatter
        with contextlib.redirect_stdout(io.StringIO()):
            onnx_program = torch.onnx.export(program, example, dynamo=True, input_names=names, opset_version=opset,
                                             verbose=False, optimize=True)
        _save_streamed(onnx_program, output)
        return
    callable_module = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    if isinstance(module, torch.export.ExportedProgram):
        callable_module = torch.jit.trace(callable_module, example, check_trace=False)
    torch.onnx.export(
        callable_module,
        example,
        output,
        dynamo=False,
        do_constant_folding=fold,
        input_names=names,
        dynamic_axes={name: {axis: ("batch" if axis == 0 else f"{name}_dim{axis}") for axis in dynamic[name]}
                      for name in names if dynamic[name]},
        opset_version=opset,
    )


def _save_streamed(onnx_program, output: str) -> None:
    """One self-contained .onnx without one in-memory proto of all weights: save with external data
    (written tensor by tensor), then write the graph and append each initializer as its own
    ModelProto{graph{initializer}}; protobuf parses concatenated messages as one merged message
    (repeated fields appended), so the file is the ordinary single-file model. Past protobuf's 2 GiB
    a single file cannot exist: torch.onnx's own save (external data) is left as it was."""
    import shutil
    import tempfile
    from pathlib import Path

    import onnx

    target = Path(output)
    parts = Path(tempfile.mkdtemp(prefix=".parts-", dir=target.parent))
    try:
        onnx_program.save(str(parts / "model.onnx"), external_data=True)
        data = parts / "model.onnx.data"
        if not data.exists() or data.stat().st_size > PROTOBUF_LIMIT:
            onnx_program.save(output)
            return
        model = onnx.load(str(parts / "model.onnx"), load_external_data=False)
        external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        del model.graph.initializer[:]
        model.graph.initializer.extend(inline)
        with open(target, "wb") as out, open(data, "rb") as weights:
            out.write(model.SerializeToString())
            for tensor in external:
                where = {e.key: e.value for e in tensor.external_data}
                weights.seek(int(where.get("offset", 0)))
                raw = weights.read(int(where["length"]))
                tensor.ClearField("external_data")
                tensor.data_location = onnx.TensorProto.DEFAULT
                tensor.raw_data = raw
                out.write(onnx.ModelProto(graph=onnx.GraphProto(initializer=[tensor])).SerializeToString())
                tensor.ClearField("raw_data")
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def _release() -> None:
    """Collect what a failed export left and hand freed heap back to the system (glibc keeps it)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
