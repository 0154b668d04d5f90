"""ONNX fp32 -> int8 with ONNX Runtime quantization: dynamic, or static with calibration data."""

from __future__ import annotations

import logging
import shutil

from convrepair.errors import BadInput
from convrepair.plugins import ConvertNotes, ConvertRequest
from convrepair_plugins.onnx import PLUGIN
from convrepair_plugins.onnx.runner import load_onnx_model
from convrepair_plugins.onnx.verify import assert_loads


@PLUGIN.converter(
    "onnx-int8",
    sources=["onnx"],
    target="onnx-int8",
    output_format="onnx",
    description="int8 quantization (onnxruntime.quantization; dynamic, or static with --calibration)",
    options={"mode": "dynamic | static (static needs --calibration data)", "per_channel": "true|false",
             "keep_fp32": "comma-separated node names left in fp32 (precision fallback)"},
    lossy=True,
)
def to_int8(request: ConvertRequest) -> ConvertNotes:
    load_onnx_model(request.source.path)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT warns on root
    # ORT writes `<source>-inferred.onnx` beside the source it quantizes: quantize a copy placed in
    # our own output directory, so that a read-only source folder (a contained worker) is never written.
    staged = request.output.with_name(request.output.stem + ".source.onnx")
    shutil.copyfile(request.source.path, staged)
    try:
        return _quantize(request, str(staged))
    finally:
        staged.unlink(missing_ok=True)


def _quantize(request: ConvertRequest, source: str) -> ConvertNotes:
    import onnx
    import onnxruntime
    from onnxruntime import quantization as q

    mode = str(request.options.get("mode", "static" if request.calibration else "dynamic"))
    per_channel = str(request.options.get("per_channel", "false")).lower() == "true"
    output = str(request.output)
    keep = [name for name in str(request.options.get("keep_fp32", "")).split(",") if name]
    # ORT splits a Gemm into `<name>_MatMul` + Add before quantizing: exclude both spellings
    excluded = [variant for name in keep for variant in (name, f"{name}_MatMul")]
    details: dict = {"mode": mode, "per_channel": per_channel}
    if keep:
        details["kept_fp32"] = keep
    if mode == "dynamic":
        q.quantize_dynamic(source, output, weight_type=q.QuantType.QUInt8, per_channel=per_channel, nodes_to_exclude=excluded)
    elif mode == "static":
        if not request.calibration:
            raise BadInput("static int8 quantization needs calibration data (--calibration FILE.npz)")
        reader = _CalibrationReader(request.calibration, _input_names(source))
        q.quantize_static(
            source,
            output,
            reader,
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=per_channel,
            nodes_to_exclude=excluded,
        )
        details["calibration_samples"] = reader.count
    else:
        raise BadInput(f"unknown int8 mode '{mode}' (dynamic or static)")
    assert_loads(request.output, "int8")
    return ConvertNotes(
        tool="onnxruntime.quantization",
        tool_versions={"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
        output_format="onnx",
        precision="int8",
        details=details,
    )


def _input_names(path: str) -> list[str]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return [inp.name for inp in model.graph.input if inp.name not in initializers]


class _CalibrationReader:
    """Feeds calibration batches of 32 to ORT's calibrator; positional when names differ."""

    def __init__(self, data: dict, names: list[str], batch: int = 32):
        import numpy as np

        arrays = [np.asarray(data[n] if n in data else list(data.values())[i]) for i, n in enumerate(names)]
        arrays = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in arrays]  # token ids stay integers
        self.count = int(arrays[0].shape[0])
        self._batches = iter(
            [{n: a[i : i + batch] for n, a in zip(names, arrays)} for i in range(0, self.count, batch)]
        )

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # ORT may call this between calibration passes
        pass
