"""Does a model file parse as a complete model? Cheap checks, no framework loaded.

A copy that pauses longer than the quiet period looks finished by its size and time; these checks
catch the half-written file so the daemon waits for it instead of failing a job on it: a zip
(.pt2, .pt, .keras) must have its central directory and every member's CRC right, an ONNX file
must parse and pass `onnx.checker`, a TFLite flatbuffer's buffers must lie inside the file, a
SavedModel's protobuf must be whole. The checks read bytes; they never run a model.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

from convrepair.errors import exception_text


def incomplete_reason(path: Path, detect_format: Callable[[Path], str | None]) -> str | None:
    """None when `path` parses as a complete model; otherwise why it does not (yet)."""
    try:
        if path.is_dir():
            return _savedmodel(path)
        if path.stat().st_size == 0:
            return "is empty"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()
            if broken is not None:
                return f"zip member {broken} fails its CRC check"
        elif _starts_with(path, b"PK\x03\x04"):
            return "is a zip archive cut short (no central directory at its end)"
        fmt = detect_format(path)
        if fmt is None:
            return "content is not a model format convrepair knows"
        if fmt == "onnx":
            return _onnx(path)
        if fmt == "tflite":
            return _tflite(path.read_bytes())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        return f"cannot be read whole: {exception_text(exc)}"
    return None


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


def _onnx(path: Path) -> str | None:
    import onnx  # protobuf only: no runtime, nothing of the model runs

    try:
        onnx.checker.check_model(str(path))  # by path: external data resolves beside the model
    except Exception as exc:  # noqa: BLE001 - protobuf and checker raise many kinds
        return f"does not parse as ONNX: {exception_text(exc)}"
    return None


def _tflite(data: bytes) -> str | None:
    """The root table and every buffer of a TFLite flatbuffer (its bulk, written first) lie inside the file."""
    size = len(data)

    def u32(at: int) -> int:
        if at < 0 or at + 4 > size:
            raise ValueError(f"offset {at} is past the end ({size} bytes)")
        return struct.unpack_from("<I", data, at)[0]

    def field(table: int, index: int) -> int | None:
        """Absolute position of a table's field, None when absent."""
        vtable = table - struct.unpack_from("<i", data, table)[0]
        if vtable < 0 or vtable + 4 > size:
            raise ValueError("vtable outside the file")
        vsize = struct.unpack_from("<H", data, vtable)[0]
        slot = 4 + 2 * index
        if slot + 2 > vsize or vtable + slot + 2 > size:
            return None
        offset = struct.unpack_from("<H", data, vtable + slot)[0]
        return table + offset if offset else None

    try:
        root = u32(0)
        u32(root)
        buffers_at = field(root, 4)  # Model.buffers
        if buffers_at is None:
            return None
        vector = buffers_at + u32(buffers_at)
        for i in range(u32(vector)):
            entry = vector + 4 + 4 * i
            buffer = entry + u32(entry)
            data_at = field(buffer, 0)  # Buffer.data: [ubyte]
            if data_at is not None:
                bytes_at = data_at + u32(data_at)
                if bytes_at + 4 + u32(bytes_at) > size:
                    raise ValueError(f"buffer {i} ends past the end of the file")
            offset_at, size_at = field(buffer, 1), field(buffer, 2)  # external Buffer.offset/size (large models)
            if offset_at is not None and size_at is not None:
                start, length = struct.unpack_from("<Q", data, offset_at)[0], struct.unpack_from("<Q", data, size_at)[0]
                if start > 1 and start + length > size:
                    raise ValueError(f"buffer {i} ends past the end of the file")
    except (ValueError, struct.error) as exc:
        return f"is not a whole TFLite flatbuffer: {exception_text(exc)}"
    return None


def _savedmodel(path: Path) -> str | None:
    graph = path / "saved_model.pb"
    if not graph.is_file():
        return None if (path / "saved_model.pbtxt").is_file() else "has no saved_model.pb"
    if not protobuf_is_whole(graph.read_bytes()):
        return "saved_model.pb is cut short"
    variables = path / "variables"
    if variables.is_dir() and not (variables / "variables.index").is_file():
        return "variables/ has no variables.index"
    return None


def protobuf_is_whole(data: bytes) -> bool:
    """Every top-level field of a protobuf message ends inside `data` (a cut file ends mid-field)."""
    at, size = 0, len(data)

    def varint() -> int:
        nonlocal at
        value, shift = 0, 0
        while True:
            if at >= size or shift > 63:
                raise ValueError("varint runs past the end")
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    try:
        while at < size:
            wire = varint() & 7
            if wire == 0:
                varint()
            elif wire == 1:
                at += 8
            elif wire == 2:
                length = varint()  # read before `at` moves on
                at += length
            elif wire == 5:
                at += 4
            else:
                return False
            if at > size:
                return False
    except ValueError:
        return False
    return True
