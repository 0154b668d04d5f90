"""Refuse TorchScript that could touch files, processes or the network before any of it runs.

TorchScript is a program: `torch.jit.load` already runs a module's `__setstate__`, and `forward`
may call any registered operator. The policy, applied twice:

  * before loading, to the archive's serialized code (`code/**.py`: every call reads
    `torch.NAME(…)` or `ops.NAMESPACE.NAME(…)`), and
  * after loading, to the inlined graph of every method of every submodule (blocks included);

allows operators of the namespaces in `ALLOWED_NAMESPACES` except those in `DENIED_OPS`.
Everything else — `aten::from_file`, `aten::save`, RPC, distributed collectives, profiler hooks,
custom operator libraries, calls the scanner cannot see into — is refused, naming the op.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from convrepair.errors import UnsafeModel

ALLOWED_NAMESPACES = frozenset({"aten", "prim", "quantized", "_quantized"})
DENIED_OPS = frozenset({
    "aten::from_file",  # maps any file, shared=True writes through to it
    "aten::save",  # writes a file
    "prim::PythonOp",  # calls back into Python
    "prim::CallFunction",  # a call left after inlining: its callee is not visible here
    "prim::rpc_async", "prim::rpc_sync", "prim::rpc_remote",  # network
})
_CALL = re.compile(r"(?:(?<![\w.])torch|\bops\s*\.\s*(\w+))\s*\.\s*(\w+)\s*\(")


def refusal(kind: str) -> str | None:
    """Why the operator `kind` ('ns::name') is refused; None when it is allowed."""
    namespace = kind.split("::", 1)[0]
    if kind in DENIED_OPS:
        return f"operator {kind} (file, process or network access) is not allowed"
    if namespace not in ALLOWED_NAMESPACES:
        return f"operator {kind} is outside the allowed namespaces ({', '.join(sorted(ALLOWED_NAMESPACES))})"
    return None


def scan_archive(path: Path) -> None:
    """Refuse an archive whose serialized code calls a refused operator (before it is loaded)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if "/code/" not in name or not name.endswith(".py"):
                    continue
                text = archive.read(name).decode("utf-8", "replace")
                for namespace, op in _CALL.findall(text):
                    reason = refusal(f"{namespace or 'aten'}::{op}")
                    if reason:
                        raise UnsafeModel(f"TorchScript refused: {reason} (in {name.split('/code/', 1)[1]})", path)
    except (zipfile.BadZipFile, OSError):
        return  # not readable as a zip: torch.jit.load reports it


def scan_module(module, path: Path) -> None:
    """Refuse a loaded ScriptModule whose methods (inlined, with their blocks) use a refused operator."""
    import torch

    for owner_name, owner in module.named_modules():
        for method in owner._c._method_names():
            graph = owner._c._get_method(method).graph.copy()
            torch._C._jit_pass_inline(graph)
            for kind in _kinds(graph.nodes()):
                reason = refusal(kind)
                if reason:
                    where = f"{owner_name}.{method}" if owner_name else method
                    raise UnsafeModel(f"TorchScript refused: {reason} (in {where})", path)


def _kinds(nodes):
    for node in nodes:
        yield node.kind()
        for block in node.blocks():
            yield from _kinds(block.nodes())
