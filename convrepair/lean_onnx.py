"""An ONNX model too large to hold twice, kept in its *lean* form: the graph in a small file, every
weight in one external-data file beside it (issue 21: a 334M-parameter BERT parsed with its weights
is 1.34 GB per copy, and localization used to hold five copies of each model at once).

`write` streams any ONNX file (weights embedded or external) into that form one initializer at a
time (never the whole proto in memory); `load` parses only the graph; `weights` reads a tensor from
the data file as a read-only memory map (file pages the kernel can drop, never counted against a
worker's RLIMIT_DATA); `session` builds an ONNX Runtime session from a *file* in the model's folder
(ONNX Runtime resolves external data relative to the model file, and refuses absolute paths), with
no prepacked copy of the weights and no arena. A lean proto records its folder in its
`metadata_props` (`HOME`), so whoever holds it can run it.
"""

from __future__ import annotations

import mmap
import uuid
from pathlib import Path
from typing import Any

import numpy as np

LEAN_BYTES = 256 << 20  # a model larger than this (file + external data) is localized in its lean form
HOME = "convrepair.lean_home"  # metadata key: the folder of the lean file (where its data lies)
_ALIGN = 4096  # data offsets page-aligned, so ONNX Runtime and numpy can map them
_SMALL = 1024  # tensors smaller than this stay in the graph file
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# protobuf field numbers: ModelProto.graph, GraphProto.initializer
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5


def size_of(path: Path) -> int:
    """Bytes of a model file and of the files beside it that carry its name (external data); of
    every file in it for a folder (a SavedModel)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    total = path.stat().st_size
    for companion in path.parent.glob(path.name + "*"):
        if companion != path and companion.is_file() and not companion.name.endswith(".json"):
            total += companion.stat().st_size
    return total


def is_large(path: Path) -> bool:
    try:
        return size_of(Path(path)) > LEAN_BYTES
    except OSError:
        return False


def write(source: Path, folder: Path, name: str = "ir.onnx") -> Path:
    """`source` in lean form as `folder/name` (+ `name.data`), streamed one initializer at a time."""
    import onnx

    source, folder = Path(source), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out, data_name = folder / name, name + ".data"
    with open(source, "rb") as handle, open(folder / data_name, "wb") as data:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if source.stat().st_size else None
        view = memoryview(mapped) if mapped is not None else memoryview(b"")
        try:
            parts: list[bytes | memoryview] = []
            for field, wire, start, end, body in _fields(view, 0, len(view)):
                if field == _MODEL_GRAPH and wire == 2:
                    graph = bytearray()
                    for g_field, g_wire, g_start, g_end, g_body in _fields(view, body[0], body[1]):
                        if g_field == _GRAPH_INITIALIZER and g_wire == 2:
                            tensor = onnx.TensorProto.FromString(bytes(view[g_body[0]:g_body[1]]))
                            _externalize(tensor, source.parent, data, data_name)
                            graph += _tagged(_GRAPH_INITIALIZER, tensor.SerializeToString())
                        else:
                            graph += view[g_start:g_end]
                    parts.append(_tagged(_MODEL_GRAPH, bytes(graph)))
                else:
                    parts.append(bytes(view[start:end]))
        finally:
            view.release()
            if mapped is not None:
                mapped.close()
    with open(out, "wb") as handle:
        for part in parts:
            handle.write(part)
    return out


def load(path: Path):
    """The lean file's graph, weights left in their file; its folder recorded under `HOME`."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    home = str(Path(path).resolve().parent)
    for entry in proto.metadata_props:
        if entry.key == HOME:
            entry.value = home
            break
    else:
        proto.metadata_props.add(key=HOME, value=home)
    return proto


def home_of(proto) -> Path | None:
    """The folder of a lean proto (None: an ordinary proto, weights inside)."""
    for entry in proto.metadata_props:
        if entry.key == HOME:
            return Path(entry.value)
    return None


def mapped(tensor, home: Path | None) -> bool:
    """Is this tensor read from a lean model's data file (not kept: read again when asked)?"""
    return tensor.data_location == _EXTERNAL and home is not None


def weights(tensor, home: Path | None) -> np.ndarray:
    """A TensorProto's value: memory-mapped from its data file when external (read-only), else parsed."""
    from onnx import helper, numpy_helper

    if not mapped(tensor, home):
        return numpy_helper.to_array(tensor)
    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(int(d) for d in tensor.dims)
    count = int(np.prod(shape, dtype=np.int64))
    plain = dtype.kind in "fiub" and tensor.data_type not in _PACKED
    if not plain or count * dtype.itemsize != int(info.get("length", count * dtype.itemsize)) or count == 0:
        return numpy_helper.to_array(tensor, str(home))  # bfloat16, float8, int4 …: onnx knows how to unpack
    values = np.memmap(home / info["location"], dtype=dtype, mode="r", offset=int(info.get("offset", 0)), shape=shape)
    return values.view(np.ndarray)


def session(proto, outputs: list[str] | None = None, optimize: bool = False):
    """An ONNX Runtime session of `proto` (lean or not) with `outputs` added as graph outputs.
    A lean proto is written beside its data (the file is gone once the session has read it);
    neither prepacked weights nor an arena for a lean one: each would be another copy of them."""
    import onnx
    import onnxruntime as ort

    home = home_of(proto)
    if outputs:
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)  # a lean proto is small: the graph without its weights
        existing = {o.name for o in probe.graph.output}
        for name in outputs:
            if name not in existing:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
    else:
        probe = proto
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep tensors as named
    if home is None:
        return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.disable_prepacking", "1")
    path = home / f".probe-{uuid.uuid4().hex[:12]}.onnx"
    path.write_bytes(probe.SerializeToString())
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    finally:
        path.unlink(missing_ok=True)


# --- protobuf wire format (just enough to walk ModelProto → GraphProto fields) --------------------

_PACKED = {16, 17, 18, 19, 20, 21, 22, 23}  # bfloat16, float8 (4 kinds), uint4, int4, float4: not plain numpy


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(view: memoryview, start: int, end: int):
    """(field number, wire type, start, end, (body start, body end)) of each field in view[start:end]."""
    pos = start
    while pos < end:
        begin = pos
        tag, pos = _varint(view, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(view, pos)
            body = (pos, pos)
        elif wire == 1:
            pos += 8
            body = (pos - 8, pos)
        elif wire == 2:
            length, pos = _varint(view, pos)
            body = (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
            body = (pos - 4, pos)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {begin}")
        yield field, wire, begin, pos, body


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _tagged(field: int, payload: bytes) -> bytes:
    return _encode_varint((field << 3) | 2) + _encode_varint(len(payload)) + payload


def _externalize(tensor: Any, source_dir: Path, data, data_name: str) -> None:
    """Move the tensor's bytes (embedded, or in the source's own external file) into `data`."""
    from onnx import numpy_helper

    if tensor.data_location == _EXTERNAL:
        info = {entry.key: entry.value for entry in tensor.external_data}
        with open(source_dir / info["location"], "rb") as handle:
            handle.seek(int(info.get("offset", 0)))
            raw = handle.read(int(info["length"])) if "length" in info else handle.read()
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    else:
        raw = numpy_helper.to_array(tensor).tobytes() if tensor.data_type not in _PACKED else None
    if raw is None or len(raw) < _SMALL:
        if tensor.data_location == _EXTERNAL:  # small, but its file is not ours: bring it inside
            del tensor.external_data[:]
            tensor.data_location = 0
            tensor.raw_data = raw
        return
    offset = -(-data.tell() // _ALIGN) * _ALIGN
    data.seek(offset)
    data.write(raw)
    for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(name)
    del tensor.external_data[:]
    tensor.data_location = _EXTERNAL
    for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
        tensor.external_data.add(key=key, value=value)
