"""Recognise PyTorch archives by their zip members and run them (CUDA when present)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convrepair.model import Runner, TensorSpec, conform_feeds, zip_members
from convrepair.plugins import LoadRequest
from convrepair_plugins.torch import PLUGIN
from convrepair_plugins.torch.safe_load import load_exported_program, load_torchscript


def is_pt2(path: Path) -> bool:
    return path.is_file() and any(m.endswith("/archive_format") for m in zip_members(path))


def is_torchscript(path: Path) -> bool:
    members = zip_members(path) if path.is_file() else []
    return any("/code/" in m for m in members) and any(m.endswith("data.pkl") or m.endswith("constants.pkl") for m in members)


def pick_device(requested: str) -> str:
    import torch

    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


class TorchRunner(Runner):
    """Runs a torch callable; inputs are passed positionally in the declared order."""

    def __init__(self, path: Path, module, inputs: list[TensorSpec], device: str):
        import torch

        self.path = path
        self.device = device
        self.module = module.to(device) if hasattr(module, "to") else module
        self.inputs = inputs
        self.outputs: list[TensorSpec] = []
        self._torch = torch

    @property
    def torch_module(self):
        """The live module, for stages that need gradients or hooks (localization, lenses)."""
        return self.module

    def run(self, feeds):
        torch = self._torch
        feeds = conform_feeds(self.inputs, feeds, self.path)
        args = [torch.from_numpy(feeds[spec.name]).to(self.device) for spec in self.inputs]
        with torch.no_grad():
            result = self.module(*args)
        values = _flatten(result)
        if not self.outputs:
            self.outputs = [
                TensorSpec(f"output_{i}", (None, *v.shape[1:]), str(v.dtype).replace("torch.", ""))
                for i, v in enumerate(values)
            ]
        return {spec.name: v.detach().cpu().numpy() for spec, v in zip(self.outputs, values)}


def _flatten(result) -> list:
    if isinstance(result, (list, tuple)):
        return [t for item in result for t in _flatten(item)]
    if isinstance(result, dict):
        return [t for item in result.values() for t in _flatten(item)]
    return [result]


def exported_input_specs(program) -> list[tuple[str, tuple, str]]:
    """(name, shape with None for symbolic dims, dtype) of an exported program's user inputs."""
    from torch.export.graph_signature import InputKind

    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in user:
        meta = nodes[name].meta.get("val")
        shape = tuple(int(d) if str(d).isdigit() else None for d in meta.shape)
        specs.append((name, shape, str(meta.dtype).replace("torch.", "")))
    return specs


@dataclass(frozen=True)
class DynamicDims:
    """The dynamic dimensions of an exported program's user inputs.

    `axes[i][a]` is None for a static axis, else the axis' size as an expression over the
    program's symbols (`s0`, or `2*s0` for a derived `Dim`); `ranges` bounds each symbol
    (min, max or None when the `Dim` has no max). Inputs that share a `Dim` share its symbol,
    so sizes chosen per symbol keep them equal."""

    axes: list[list[Any]]
    ranges: dict[Any, tuple[int, int | None]]

    def sizes(self, wanted: Callable[[Any, int], int]) -> list[list[int | None]]:
        """Concrete sizes of every dynamic axis: `wanted(symbol, first axis it sizes)`, clamped to
        the symbol's range; a derived axis is its expression evaluated at those sizes."""
        values: dict[Any, int] = {}
        for axes in self.axes:
            for axis, expr in enumerate(axes):
                for symbol in sorted(getattr(expr, "free_symbols", ()), key=str):
                    if symbol not in values:
                        low, high = self.ranges.get(symbol, (1, None))
                        want = max(low, wanted(symbol, axis))
                        values[symbol] = want if high is None else min(high, want)
        return [[None if expr is None else int(expr.subs(values)) for expr in axes] for axes in self.axes]


def exported_dynamic_dims(program) -> DynamicDims:
    """Which axes of each user input are dynamic, as what expression, within which ranges."""
    from torch.export.graph_signature import InputKind

    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    axes_of: list[list[Any]] = []
    symbols = set()
    for name in user:
        axes = []
        for dim in nodes[name].meta.get("val").shape:
            expr = None if str(dim).isdigit() else getattr(getattr(dim, "node", None), "expr", None)
            axes.append(expr)
            symbols |= set(getattr(expr, "free_symbols", ()))
        axes_of.append(axes)
    ranges = {}
    for symbol in symbols:
        bounds = program.range_constraints.get(symbol)
        low = _finite_int(bounds.lower) if bounds is not None else None
        high = _finite_int(bounds.upper) if bounds is not None else None
        ranges[symbol] = (max(low or 1, 1), high)  # an unbounded Dim's range starts at 0 (or 2): sizes >= 1
    return DynamicDims(axes_of, ranges)


def _finite_int(bound) -> int | None:
    """A range bound as an int; None when unbounded. torch's `int_oo` (a `Dim` without max) says
    `is_finite` and has no float value, so neither `is_finite` nor `int()` alone can be trusted."""
    from torch.utils._sympy.numbers import int_oo

    if bound == int_oo or bound == -int_oo:
        return None
    try:
        number = int(bound)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None
    return number if abs(number) < 2**62 else None  # sys.maxsize-like sentinels mean "no bound"


@PLUGIN.format("pt2", description="PyTorch exported program (torch.export, .pt2)", suffix=".pt2", detect=is_pt2)
def load_pt2(request: LoadRequest) -> Runner:
    program = load_exported_program(request.ref.path)
    raw = exported_input_specs(program)
    layouts = request.input_layouts([shape for _, shape, _ in raw])
    inputs = [TensorSpec(n, s, d, layouts[i]) for i, (n, s, d) in enumerate(raw)]
    return TorchRunner(request.ref.path, program.module(), inputs, pick_device(request.device))


@PLUGIN.format("torchscript", description="TorchScript archive (torch.jit.save, .pt)", suffix=".pt", detect=is_torchscript)
def load_torchscript_model(request: LoadRequest) -> Runner:
    module, declared = load_torchscript(request.ref.path)
    if declared:
        raw = [(d["name"], tuple(d["shape"]), d.get("dtype", "float32")) for d in declared]
    else:
        names = [i.debugName().split(".")[0] for i in list(module.graph.inputs())[1:]]
        raw = [(name, (), "float32") for name in names]  # shapes unknown: not checked
    layouts = request.input_layouts([shape for _, shape, _ in raw])
    inputs = [TensorSpec(n, s, d, layouts[i]) for i, (n, s, d) in enumerate(raw)]
    return TorchRunner(request.ref.path, module, inputs, pick_device(request.device))
