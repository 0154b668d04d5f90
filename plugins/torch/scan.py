"""Refuse TorchScript that could touch files, processes or the network before any of it runs.

TorchScript is a program: `torch.jit.load` already runs a module's `__setstate__`, and `forward`
may call any registered operator. The policy, applied twice:

  * before loading, to the archive's serialized code: every `code/**.py` member is parsed with
    Python's own parser (TorchScript's serialization is Python syntax; what does not parse is
    refused) and every call in it is resolved — `torch.NAME(…)` and `ops.NS.NAME(…)` to the
    operator they name, `__torch__.….NAME(…)` to a function or class the archive defines, a
    bare name to TorchScript's builtins or the module's own functions, `value.NAME(…)` to a method
    the archive defines, a list/dict/str method or the tensor method of an allowed operator.
    A call that resolves to nothing, or to a refused operator, refuses the archive — as does any
    mention of a refused operator (`f = torch.from_file`) and every definition is read,
    `__setstate__` included. Comments, line breaks and parentheses cannot hide a call from a
    parser the way they hid it from a pattern;
  * after loading, to the inlined graph of every method of every submodule (blocks included);

allows operators of the namespaces in `ALLOWED_NAMESPACES` except those in `DENIED_OPS`.
Everything else — `aten::from_file`, `aten::save`, RPC, distributed collectives, profiler hooks,
custom operator libraries and classes, calls the scanner cannot see into — is refused, naming it.
"""

from __future__ import annotations

import ast
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
# the bare names TorchScript's printer calls (builtins of the language, not operators)
BUILTINS = frozenset({
    "annotate", "uninitialized", "unchecked_cast", "isinstance", "getattr", "hasattr", "range", "len", "int",
    "float", "bool", "str", "complex", "list", "tuple", "dict", "min", "max", "abs", "round", "divmod", "ord",
    "chr", "hex", "oct", "bin", "sum", "any", "all", "enumerate", "zip", "sorted", "reversed", "print", "hash",
    "id", "NamedTuple", "Tensor", "Optional", "List", "Dict", "Tuple", "Union", "Future", "Await",
})
# methods of TorchScript's list, dict and str values
CONTAINER_METHODS = frozenset({
    "append", "extend", "insert", "pop", "remove", "clear", "copy", "index", "count", "reverse", "sort", "keys",
    "values", "items", "get", "setdefault", "update", "popitem", "format", "join", "split", "rsplit", "strip",
    "lstrip", "rstrip", "startswith", "endswith", "replace", "lower", "upper", "find", "rfind", "isdigit",
    "isalpha", "isspace", "partition", "rpartition", "splitlines", "zfill", "center", "ljust", "rjust",
    "forward", "__len__", "__getitem__", "__contains__",
})
MAX_CODE_BYTES = 64 << 20  # serialized code past this is not a model we should parse


def refusal(kind: str) -> str | None:
    """Why the operator `kind` ('ns::name') is refused; None when it is allowed."""
    namespace = kind.split("::", 1)[0]
    if kind in DENIED_OPS:
        return f"operator {kind} (file, process or network access) is not allowed"
    if namespace not in ALLOWED_NAMESPACES:
        return f"operator {kind} is outside the allowed namespaces ({', '.join(sorted(ALLOWED_NAMESPACES))})"
    return None


def scan_archive(path: Path) -> None:
    """Refuse an archive whose serialized code calls anything refused or unresolvable (before it
    is loaded: loading runs `__setstate__`)."""
    from convrepair.contain.archive import check_zip

    check_zip(path, "TorchScript archive")
    try:
        with zipfile.ZipFile(path) as archive:
            sources = {}
            for info in archive.infolist():
                name = info.filename
                if "/code/" not in name or not name.endswith(".py"):
                    continue
                if info.file_size > MAX_CODE_BYTES:
                    raise UnsafeModel(f"TorchScript refused: {_short(name)} holds {info.file_size >> 20} MB of code", path)
                sources[_module_name(name)] = (_short(name), archive.read(name))
    except (zipfile.BadZipFile, OSError):
        return  # not readable as a zip: torch.jit.load reports it
    trees = {module: _parse(short, data, path) for module, (short, data) in sources.items()}
    defined, methods = _definitions(trees)
    for module, tree in trees.items():
        _check_tree(tree, module, defined, methods, sources[module][0], path)


def _short(member: str) -> str:
    return member.split("/code/", 1)[1]


def _module_name(member: str) -> str:
    """`archive/code/__torch__/a/b.py` → `__torch__.a.b` (the name other code calls it by)."""
    return _short(member)[: -len(".py")].replace("/", ".")


def _parse(short: str, data: bytes, path: Path) -> ast.Module:
    try:
        text = data.decode("utf-8")  # as str: a coding cookie cannot make us read other code than torch does
        return ast.parse(text, filename=short)
    except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UnsafeModel(f"TorchScript refused: its code cannot be parsed ({short}: {type(exc).__name__}); "
                          "calls in code we cannot read are never run", path) from None


def _definitions(trees: dict[str, ast.Module]) -> tuple[set[str], set[str]]:
    """Qualified names of every function and class the archive defines, and every method name."""
    defined, methods = set(), set()
    for module, tree in trees.items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(f"{module}.{node.name}")
            if isinstance(node, ast.ClassDef):
                methods.update(item.name for item in node.body if isinstance(item, ast.FunctionDef))
    return defined, methods


def _dotted(node: ast.AST) -> list[str] | None:
    """`a.b.c` as ['a', 'b', 'c']; None when the chain is not rooted at a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _operator(parts: list[str]) -> str | None:
    """The operator a dotted name denotes ('ns::name'), or None when it names no operator."""
    if parts[0] == "torch" and len(parts) == 2:
        return f"aten::{parts[1]}"
    if parts[0] == "torch" and len(parts) == 4 and parts[1] == "ops":
        return f"{parts[2]}::{parts[3]}"
    if parts[0] == "ops" and len(parts) == 3:
        return f"{parts[1]}::{parts[2]}"
    return None


def _check_tree(tree: ast.Module, module: str, defined: set[str], methods: set[str], short: str, path: Path) -> None:
    def refuse(reason: str, node: ast.AST) -> None:
        raise UnsafeModel(f"TorchScript refused: {reason} (in {short}, line {getattr(node, 'lineno', '?')})", path)

    local = {name.rsplit(".", 1)[1] for name in defined if name.rsplit(".", 1)[0] == module}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Lambda, ast.Global, ast.Nonlocal, ast.Await,
                             ast.Yield, ast.YieldFrom, ast.AsyncFunctionDef)):
            refuse(f"{type(node).__name__} has no place in serialized TorchScript", node)
        if isinstance(node, ast.Attribute):  # a mention is enough: `f = torch.from_file` then `f(…)`
            parts = _dotted(node)
            if parts and (parts[0] in ("torch", "ops")):
                if parts[:2] == ["torch", "classes"]:
                    refuse(f"custom class {'.'.join(parts)} (its code is not in the archive)", node)
                kind = _operator(parts)
                if kind and refusal(kind):
                    refuse(refusal(kind), node)
        if isinstance(node, ast.Call):
            _check_call(node, defined, methods, local, refuse)


def _check_call(call: ast.Call, defined: set[str], methods: set[str], local: set[str], refuse) -> None:
    func = call.func
    if isinstance(func, ast.Name):
        if func.id not in BUILTINS and func.id not in local:
            refuse(f"call to {func.id}(), which is neither a TorchScript builtin nor defined in the archive", call)
        if func.id in ("getattr", "hasattr") and call.args and isinstance(call.args[0], ast.Name) \
                and call.args[0].id in ("torch", "ops", "__torch__"):
            refuse(f"{func.id}() on the {call.args[0].id} namespace (an operator looked up by a string)", call)
        return
    if not isinstance(func, ast.Attribute):
        refuse(f"a call through {type(func).__name__} the scanner cannot resolve", call)
    parts = _dotted(func)
    if parts and parts[:2] == ["torch", "classes"]:
        refuse(f"custom class {'.'.join(parts)} (its code is not in the archive)", call)
    if parts and parts[0] in ("torch", "ops"):
        kind = _operator(parts)
        if kind is None:
            refuse(f"call to {'.'.join(parts)}, which names no operator", call)
        reason = refusal(kind)
        if reason:
            refuse(reason, call)
        return
    if parts and parts[0] == "__torch__":
        if ".".join(parts) not in defined:
            refuse(f"call to {'.'.join(parts)}, which the archive does not define", call)
        return
    name = func.attr  # a method of a value: the archive's, a container's, or a tensor's (an aten op)
    if name in methods or name in CONTAINER_METHODS:
        return
    reason = refusal(f"aten::{name}")
    if reason:
        refuse(f"method .{name}(): {reason}", call)


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
