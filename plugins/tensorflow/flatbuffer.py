"""Read what a .tflite says of its own tensors by parsing the flatbuffer, never loading it.

The parent process decides the precision a check judges at before any model runs, and it runs no
model: a sidecar-less `.tflite` tells its precision through its tensors' types and quantization,
read here with the plain `flatbuffers` reader over TFLite's schema (Model.subgraphs[].tensors[]:
`type`, `quantization.scale`). A malformed file is BadInput, one line.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from convrepair.errors import BadInput

# schema.fbs field ids: Model.subgraphs = 2; SubGraph.tensors = 0; Tensor.type = 1,
# Tensor.quantization = 4; QuantizationParameters.scale = 2
_MODEL_SUBGRAPHS, _SUBGRAPH_TENSORS, _TENSOR_TYPE, _TENSOR_QUANTIZATION, _QUANT_SCALE = 2, 0, 1, 4, 2
_FLOAT16 = 1
_INTEGER_TYPES = {3, 7, 9, 17}  # UINT8, INT16, INT8, INT4: quantized when they carry a scale


def tensor_kinds(path: Path) -> set[str]:
    """{"quantized"} when any tensor is quantized, else {"float16"} when any is float16, else empty.
    Work is bounded by the file's size, whatever its offsets say."""
    from flatbuffers import encode, number_types
    from flatbuffers.table import Table

    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            root = Table(buf, encode.Get(number_types.UOffsetTFlags.packer_type, buf, 0))
            kinds: set[str] = set()
            budget = len(buf) // 8  # a real tensor table takes more bytes than this; crafted shared vectors stop here
            for subgraph in _tables(root, _MODEL_SUBGRAPHS):
                for tensor in _tables(subgraph, _SUBGRAPH_TENSORS):
                    budget -= 1
                    if budget < 0:
                        raise ValueError("more tensors than the file can hold")
                    offset = tensor.Offset(4 + 2 * _TENSOR_TYPE)
                    kind = tensor.Get(number_types.Int8Flags, offset + tensor.Pos) if offset else 0
                    if kind == _FLOAT16:
                        kinds.add("float16")
                    elif kind in _INTEGER_TYPES and _has_scale(tensor, Table, number_types):
                        return {"quantized"}  # decides the precision: no need to read on
            return kinds
    except Exception as exc:  # noqa: BLE001 - OSError, struct.error, IndexError: any malformed file
        raise BadInput(f"is not a readable TFLite flatbuffer: {type(exc).__name__}: {str(exc)[:120]}", path) from None


def _tables(table, field: int):
    from flatbuffers.table import Table

    offset = table.Offset(4 + 2 * field)
    if not offset:
        return
    start, count = table.Vector(offset), table.VectorLen(offset)
    for i in range(count):
        yield Table(table.Bytes, table.Indirect(start + 4 * i))


def _has_scale(tensor, Table, number_types) -> bool:
    offset = tensor.Offset(4 + 2 * _TENSOR_QUANTIZATION)
    if not offset:
        return False
    quant = Table(tensor.Bytes, tensor.Indirect(offset + tensor.Pos))
    scale = quant.Offset(4 + 2 * _QUANT_SCALE)
    if not scale:
        return False
    start, count = quant.Vector(scale), quant.VectorLen(scale)
    return any(quant.Get(number_types.Float32Flags, start + 4 * i) != 0.0 for i in range(min(count, 1 << 16)))
