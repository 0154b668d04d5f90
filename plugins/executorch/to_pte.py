"""PyTorch (.pt2) -> ExecuTorch (.pte), lowered to the XNNPACK delegate, as ExecuTorch's guide does it.

torch.export (again, over the program's module, with a bounded batch: ExecuTorch plans memory for
the largest batch) -> `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])` ->
`to_executorch()`. Only the batch axis stays dynamic: other dynamic axes (a sequence length) are
fixed at the size of the program's own example inputs (recorded in the sidecar as `fixed_axes`; a
batch of another length is then refused by the runner, exit 2), and a program that keeps no
example inputs is refused. The runner splits larger batches to fit the plan.
"""

from __future__ import annotations

from convrepair.errors import BadInput
from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.executorch import PLUGIN

MAX_BATCH = 32  # memory is planned for this batch; larger batches are run in pieces


@PLUGIN.converter(
    "torch-to-executorch",
    sources=["pt2"],
    target="executorch",
    output_format="pte",
    description="torch.export -> ExecuTorch with the XNNPACK delegate (fp32)",
    options={"max_batch": f"largest batch the program plans memory for (default {MAX_BATCH})"},
)
def torch_to_executorch(request: ConvertRequest) -> ConvertNotes:
    refuse_non_pt2(request, "ExecuTorch")
    import torch

    from convrepair_plugins.executorch.quiet import quiet

    from convrepair_plugins.torch.runner import exported_input_specs
    from convrepair_plugins.torch.safe_load import load_exported_program

    path = request.source.path
    max_batch = int(request.options.get("max_batch", MAX_BATCH))
    if max_batch < 1:
        raise BadInput(f"option max_batch={max_batch}: must be at least 1")
    program = load_exported_program(path)
    specs, fixed = _fix_inner_axes(program, exported_input_specs(program), path)
    with quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    batched = [bool(shape) and shape[0] is None for _, shape, _ in specs]
    example = tuple(torch.zeros([2 if d is None else d for d in shape], dtype=getattr(torch, dtype))
                    for _, shape, dtype in specs)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dynamic_shapes = tuple({0: batch} if b else {} for b in batched)
    with quiet():
        exported = torch.export.export(program.module(), example, dynamic_shapes=dynamic_shapes if any(batched) else None)
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        delegated = _delegated_share(lowered)
        request.output.write_bytes(lowered.to_executorch().buffer)
    return ConvertNotes(
        tool="executorch (XNNPACK delegate)",
        tool_versions={"executorch": package_version("executorch"), "torch": torch.__version__},
        output_format="pte",
        precision="fp32",
        details={"partitioner": "XnnpackPartitioner", "max_batch": max_batch if any(batched) else None,
                 "delegated": delegated, "localization": "output-level only"} | ({"fixed_axes": fixed} if fixed else {}),
    )


def _fix_inner_axes(program, specs: list, path) -> tuple[list, dict]:
    """Specs with every dynamic axis but the batch fixed at the program's example-input size."""
    own = list(program.example_inputs[0]) if program.example_inputs else []
    out, fixed = [], {}
    for i, (name, shape, dtype) in enumerate(specs):
        inner = [axis for axis, dim in enumerate(shape) if dim is None and axis > 0]
        if inner and i >= len(own):
            raise BadInput(f"input '{name}' has dynamic axes {inner} besides the batch and the program keeps no "
                           "example inputs to fix them at; the ExecuTorch route plans memory for a dynamic batch "
                           "only (export with those axes static)", path)
        sizes = list(shape)
        for axis in inner:
            sizes[axis] = int(own[i].shape[axis])
            fixed.setdefault(name, {})[str(axis)] = sizes[axis]
        out.append((name, tuple(sizes), dtype))
    return out, fixed


def _delegated_share(lowered) -> dict:
    """How much of the graph XNNPACK took: ops left to ExecuTorch's portable kernels are named."""
    graph = lowered.exported_program().graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegates = [n for n in calls if "executorch_call_delegate" in str(n.target)]
    left = sorted({str(n.target).split(".")[-2] if "." in str(n.target) else str(n.target) for n in calls
                   if n not in delegates and "getitem" not in str(n.target)})
    return {"delegate_calls": len(delegates), "portable_ops": left}


def refuse_non_pt2(request: ConvertRequest, route: str) -> None:
    """A route that starts from torch.export needs a .pt2; a hop before it may have fallen back to
    TorchScript (onnx2torch's module that torch.export cannot trace), which is refused by name here
    instead of failing to open as a .pt2."""
    if request.source.format != "pt2":
        raise BadInput(f"the {route} route needs a torch.export program (.pt2), and the step before wrote "
                       f"{request.source.format} (torch.export could not trace that module)", request.source.path)
