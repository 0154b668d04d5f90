"""ONNX -> PyTorch with onnx2torch, saved as an exported program (.pt2) or, failing that, TorchScript.

onnx2torch imports torchvision at import time for two converters (NonMaxSuppression, RoIAlign).
Where torchvision is missing or broken (a CUDA wheel beside CPU torch), we import onnx2torch
against a placeholder and refuse, with a clear message, only models that use those two ops.
"""

from __future__ import annotations

import json
import sys
import types

from convrepair.errors import BadInput, exception_text
from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.torch import PLUGIN

TORCHVISION_OPS = ("NonMaxSuppression", "RoIAlign")
_torchvision_error: str | None = None


def _torchvision_placeholder(reason: str) -> dict[str, types.ModuleType]:
    def unavailable(*_args, **_kwargs):
        raise RuntimeError(f"torchvision is unavailable ({reason}); NonMaxSuppression/RoIAlign cannot run")

    root, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = unavailable
    root.ops = ops
    return {"torchvision": root, "torchvision.ops": ops}


def import_onnx2torch():
    """Import onnx2torch whether or not torchvision works; remember why it does not."""
    global _torchvision_error
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, RuntimeError (missing CUDA ops) ...
        _torchvision_error = f"{type(exc).__name__}: {exception_text(exc, 120)}"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        placeholders = _torchvision_placeholder(_torchvision_error)
        sys.modules.update(placeholders)
        try:
            import onnx2torch
        finally:
            for name in placeholders:
                sys.modules.pop(name, None)
        return onnx2torch
    import onnx2torch

    return onnx2torch


@PLUGIN.converter(
    "onnx-to-torch",
    sources=["onnx"],
    target="torch",
    output_format="pt2",
    description="onnx2torch, saved with torch.export (.pt2); TorchScript when export fails",
    options={"save_as": "pt2 | torchscript (default pt2)"},
)
def onnx_to_torch(request: ConvertRequest) -> ConvertNotes:
    import onnx
    import torch

    from convrepair_plugins.onnx.fold_shapes import fold_reshape_shapes
    from convrepair_plugins.onnx.runner import load_onnx_model

    model, folded = fold_reshape_shapes(load_onnx_model(request.source.path))
    onnx2torch = import_onnx2torch()
    used = sorted({node.op_type for node in model.graph.node} & set(TORCHVISION_OPS))
    if used and _torchvision_error:
        raise BadInput(
            f"model uses {', '.join(used)}, which onnx2torch runs through torchvision, and torchvision "
            f"does not import here ({_torchvision_error}). Install a torchvision that matches torch.",
            request.source.path,
        )
    try:
        module = onnx2torch.convert(model).eval()
    except NotImplementedError as exc:  # a node or attribute onnx2torch has no converter for: a refusal, not our bug
        raise BadInput(f"onnx2torch cannot convert this model: {exception_text(exc, 240)}", request.source.path) from None
    static = _static_reshapes(module)
    inputs = graph_inputs(model)
    example = tuple(
        torch.zeros([2 if d is None else d for d in shape], dtype=torch.float32) for _, shape in inputs
    )
    save_as = str(request.options.get("save_as", "pt2"))
    details: dict = {"onnx2torch": "converted", "save_as": save_as, "reshape_shapes_folded": folded, "static_reshapes": static}
    output, output_format = request.output, "pt2"
    if save_as == "pt2":
        try:
            batch = torch.export.Dim("batch", min=1, max=1 << 20)
            dynamic = tuple({0: batch} if shape and shape[0] is None else {} for _, shape in inputs)
            program = torch.export.export(module, example, dynamic_shapes=dynamic)
            torch.export.save(program, str(output))
        except Exception as exc:  # noqa: BLE001 - fall back to TorchScript and say so
            details["pt2_error"] = f"{type(exc).__name__}: {exception_text(exc, 200)}"
            save_as = "torchscript"
    if save_as == "torchscript":
        output, output_format = request.output.with_suffix(".pt"), "torchscript"
        traced = torch.jit.trace(module, example)
        _check_batch_generalises(traced, inputs)
        spec = json.dumps({"inputs": [{"name": n, "shape": list(s), "dtype": "float32"} for n, s in inputs]})
        torch.jit.save(traced, str(output), _extra_files={"convrepair_inputs.json": spec})
    versions = {"onnx2torch": package_version("onnx2torch"), "torch": torch.__version__, "onnx": onnx.__version__}
    if _torchvision_error:
        details["torchvision"] = f"unavailable ({_torchvision_error}); placeholder used"
    return ConvertNotes(
        tool="onnx2torch", tool_versions=versions, output_format=output_format, output=output, details=details
    )


def _static_reshapes(module) -> int:
    """Replace onnx2torch Reshape modules whose shape is a constant by a plain `torch.reshape`.

    onnx2torch's Reshape inspects its shape tensor at run time (`if torch.any(shape == 0)`), a
    data-dependent branch torch.export refuses. With a constant shape free of zeros, the branch
    is known and the call becomes static.
    """
    import torch

    graph, count = module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_module" or type(module.get_submodule(node.target)).__name__ != "OnnxReshape":
            continue
        shape_node = node.args[1] if len(node.args) > 1 else None
        if shape_node is None or shape_node.op != "get_attr":
            continue
        shape = tuple(int(v) for v in _get_attr(module, shape_node.target).tolist())
        if 0 in shape:
            continue
        with graph.inserting_after(node):
            static = graph.call_function(torch.reshape, (node.args[0], shape))
        node.replace_all_uses_with(static)
        graph.erase_node(node)
        count += 1
    if count:
        graph.eliminate_dead_code()
        module.recompile()
    return count


def _get_attr(module, target: str):
    value = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _check_batch_generalises(traced, inputs) -> None:
    """A trace can bake the example's batch size in; prove it runs at another one."""
    import torch

    probe = tuple(torch.zeros([3 if d is None else d for d in shape]) for _, shape in inputs)
    try:
        with torch.no_grad():
            traced(*probe)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"the TorchScript trace only runs at the traced batch size: {str(exc).splitlines()[-1][:200]}") from None


def graph_inputs(model) -> list[tuple[str, tuple]]:
    initializers = {init.name for init in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        out.append((value.name, tuple(d.dim_value if d.dim_value > 0 else None for d in dims)))
    return out
