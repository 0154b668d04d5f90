"""Refuse SavedModels whose graphs could touch files, processes or the network, before loading.

A SavedModel is a program: loading runs its initializers (and, for TF1 models, its restore op),
and the serving function may hold any op. `saved_model.pb` is parsed (not loaded) and split in two:

  * the saver: the nodes the `saver_def` names, what they depend on and the functions only they
    call (`__inference__traced_save/restore_*`). It legitimately writes and reads checkpoints, so
    it may use `SAVER_OPS` and nothing else;
  * everything else — every other node of every meta graph and every function any of them can
    reach (signature wrappers, serving and layer functions, initializers; a function the saver
    shares with them is judged here): no op in `DENIED_OPS`, none whose name holds a fragment of
    `DENIED_FRAGMENTS` (`WriteFile`, `ReadFile`, `MatchingFiles`, `PyFunc`, `*Dataset`, `*Summary*`,
    `Debug*`, `_Send`…), and `PrintV2` only to stderr, stdout or the log.

A refusal names the op and the function that holds it.
"""

from __future__ import annotations

from pathlib import Path

from convrepair.errors import BadInput, UnsafeModel

SAVER_OPS = frozenset({
    "SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec", "StringJoin",
    "StaticRegexFullMatch", "Select", "Pack", "Const", "Identity", "IdentityN", "NoOp", "Placeholder",
    "PlaceholderWithDefault", "ReadVariableOp", "AssignVariableOp", "DisableCopyOnRead", "VarHandleOp",
    "VariableV2", "Assign", "StatefulPartitionedCall", "PartitionedCall",
})
DENIED_OPS = frozenset({
    "WriteFile", "ReadFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
    "ImmutableConst",  # memory-maps a file
    "DecodeProtoV2", "EncodeProto",  # descriptor_source may name a file
    "GenerateVocabRemapping", "LoadAndRemapMatrix",
})
DENIED_FRAGMENTS = ("File", "Socket", "PyFunc", "Reader", "Writer", "Summary", "Dataset", "Iterator",
                    "Debug", "Checkpoint", "Send", "Recv", "Rpc", "Remote", "Collective", "Nccl", "Sql", "LMDB")
_PRINT_STREAMS = ("stderr", "stdout", "log(info)", "log(warning)", "log(error)")


def scan_keras(path: Path) -> None:
    """Refuse a .keras archive whose members are out of bounds (a zip bomb in the weights or the
    assets) before Keras opens it; its layers are Keras's to judge (safe_mode refuses Lambda code)."""
    from convrepair.contain.archive import check_zip

    if Path(path).is_file():
        check_zip(path, ".keras archive")


def refusal(node) -> str | None:
    """Why a NodeDef outside the saver is refused; None when it is allowed."""
    op = node.op
    if op in DENIED_OPS or any(fragment in op for fragment in DENIED_FRAGMENTS):
        return f"op {op} (file, process or network access) is not allowed"
    if op == "PrintV2":
        stream = node.attr["output_stream"].s.decode("utf-8", "replace") if "output_stream" in node.attr else "stderr"
        if stream not in _PRINT_STREAMS:
            return f"op PrintV2 writing to {stream!r} is not allowed"
    return None


def scan_savedmodel(path: Path) -> None:
    """Parse `path/saved_model.pb(txt)` and refuse it if any graph outside the saver holds a refused op."""
    for graph_def, saver_names, extra_roots in _meta_graphs(path):
        functions = {f.signature.name: f for f in graph_def.library.function}
        top = {node.name: node for node in graph_def.node}
        saver_nodes = _closure_of_nodes(top, saver_names)
        saver_functions = _reachable(functions, [top[n] for n in saver_nodes])
        other_nodes = [node for name, node in top.items() if name not in saver_nodes]
        other_functions = _reachable(functions, other_nodes, extra_roots)
        exempt = saver_functions - other_functions
        for node in other_nodes:
            _refuse_if(refusal(node), "the top-level graph", path)
        for name in saver_nodes:
            if top[name].op not in SAVER_OPS:
                _refuse_if(f"op {top[name].op} does not belong in the checkpoint saver", "the top-level graph", path)
        for name, function in functions.items():
            if name in exempt:
                for node in function.node_def:
                    if node.op not in SAVER_OPS:
                        _refuse_if(f"op {node.op} does not belong in the checkpoint saver", name, path)
            else:
                for node in function.node_def:
                    _refuse_if(refusal(node), name, path)


def _refuse_if(reason: str | None, where: str, path: Path) -> None:
    if reason:
        raise UnsafeModel(f"SavedModel refused: {reason} (in {where})", path)


def _meta_graphs(path: Path):
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    try:
        if (path / "saved_model.pb").is_file():
            model.ParseFromString((path / "saved_model.pb").read_bytes())
        else:
            text_format.Parse((path / "saved_model.pbtxt").read_text(), model)
    except (OSError, UnicodeDecodeError, DecodeError, text_format.ParseError) as exc:
        raise BadInput(f"is not a readable SavedModel: {type(exc).__name__}: {str(exc)[:200]}", path) from None
    for meta in model.meta_graphs:
        saver = meta.saver_def
        saver_names = [name.split(":")[0].lstrip("^") for name in
                       (saver.save_tensor_name, saver.restore_op_name, saver.filename_tensor_name) if name]
        roots = list(meta.object_graph_def.concrete_functions)
        yield meta.graph_def, saver_names, roots


def _closure_of_nodes(top: dict, names: list[str]) -> set[str]:
    """The named top-level nodes and every node they depend on (data and control inputs)."""
    seen: set[str] = set()
    stack = [n for n in names if n in top]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for inp in top[name].input:
            dep = inp.lstrip("^").split(":")[0]
            if dep in top and dep not in seen:
                stack.append(dep)
    return seen


def _called(node) -> list[str]:
    """Functions a node calls through its attributes (f, then_branch, body, branches …)."""
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        elif value.HasField("list"):
            names += [f.name for f in value.list.func]
    if node.op not in ("StatefulPartitionedCall", "PartitionedCall"):
        names.append(node.op)  # a library function can be called as an op by its name
    return names


def _reachable(functions: dict, nodes, extra_roots=()) -> set[str]:
    found: set[str] = set()
    stack = [name for node in nodes for name in _called(node)] + list(extra_roots)
    while stack:
        name = stack.pop()
        if name in found or name not in functions:
            continue
        found.add(name)
        stack += [called for node in functions[name].node_def for called in _called(node)]
    return found
