"""ONNX → OpenVINO IR with `openvino.convert_model`: fp32, fp16 weights, or int8 by NNCF.

- `openvino`: the graph as OpenVINO reads it, weights kept f32 (`compress_to_fp16=False`: the
  default of `ovc`/`save_model` is to compress them, which would make the fp32 route lossy).
- `openvino-fp16`: weights stored f16 (`compress_to_fp16=True`), decompressed on load; the CPU
  still computes in f32 (the runner asks for it), so this is a weights-only precision change.
- `openvino-int8`: NNCF post-training quantization (`nncf.quantize`, mixed preset) on the
  calibration samples (`--calibration FILE.npz`); `keep_fp32` nodes go to NNCF's ignored scope.
The IR is written as a folder holding `model.xml` + `model.bin`, and read back before it is kept.
"""

from __future__ import annotations

from pathlib import Path

from convrepair.errors import BadInput, exception_text
from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.openvino import PLUGIN

IR_NAME = "model.xml"


def _read_onnx(path: Path):
    import openvino as ov

    try:
        return ov.convert_model(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO's frontend refusing the graph is the user's to know
        raise BadInput(f"OpenVINO cannot convert this ONNX model: {exception_text(exc, 300)}", path) from None


def _save(model, output: Path, compress: bool) -> Path:
    import openvino as ov

    output.mkdir(parents=True, exist_ok=True)
    xml = output / IR_NAME
    ov.save_model(model, str(xml), compress_to_fp16=compress)
    ov.Core().read_model(str(xml))  # written is not enough: it must read back
    return xml


def _notes(precision: str | None, details: dict) -> ConvertNotes:
    import openvino as ov

    versions = {"openvino": ov.get_version().split("-")[0], "onnx-frontend": "openvino"}
    if precision == "int8":
        versions["nncf"] = package_version("nncf")
    return ConvertNotes(tool="openvino.convert_model" + (" + nncf.quantize" if precision == "int8" else ""),
                        tool_versions=versions, output_format="openvino", precision=precision,
                        details=details | {"inference_precision_hint": "f32", "device": "CPU"})


@PLUGIN.converter("onnx-to-openvino", sources=["onnx"], target="openvino",
                  description="openvino.convert_model, weights kept f32, run on CPU in f32")
def onnx_to_openvino(request: ConvertRequest) -> ConvertNotes:
    _save(_read_onnx(request.source.path), request.output, compress=False)
    return _notes(None, {"compress_to_fp16": False})


@PLUGIN.converter("onnx-to-openvino-fp16", sources=["onnx"], target="openvino-fp16", output_format="openvino",
                  description="openvino.convert_model with weights compressed to f16", lossy=True)
def onnx_to_openvino_fp16(request: ConvertRequest) -> ConvertNotes:
    _save(_read_onnx(request.source.path), request.output, compress=True)
    return _notes("fp16", {"compress_to_fp16": True})


@PLUGIN.converter(
    "onnx-to-openvino-int8", sources=["onnx"], target="openvino-int8", output_format="openvino",
    description="NNCF post-training int8 quantization (needs --calibration data)",
    options={"preset": "performance | mixed (default mixed: asymmetric activations)",
             "keep_fp32": "comma-separated node names left in fp32 (NNCF ignored scope)"},
    lossy=True,
)
def onnx_to_openvino_int8(request: ConvertRequest) -> ConvertNotes:
    if not request.calibration:
        raise BadInput("int8 quantization with NNCF needs calibration samples: pass --calibration FILE.npz "
                       "(e.g. the data you check with)", request.source.path)
    import nncf

    model = _read_onnx(request.source.path)
    items = _calibration_items(request.calibration, [port.get_any_name() for port in model.inputs])
    preset_name = str(request.options.get("preset", "mixed"))
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset_name not in presets:
        raise BadInput(f"unknown NNCF preset '{preset_name}' (performance or mixed)")
    keep = [name for name in str(request.options.get("keep_fp32", "")).split(",") if name]
    quantized = nncf.quantize(model, nncf.Dataset(items), preset=presets[preset_name], subset_size=len(items),
                              ignored_scope=nncf.IgnoredScope(names=keep, validate=False) if keep else None)
    _save(quantized, request.output, compress=False)
    details = {"preset": preset_name, "calibration_samples": len(items)}
    return _notes("int8", details | ({"kept_fp32": keep} if keep else {}))


def _calibration_items(data: dict, names: list[str], limit: int = 300) -> list:
    """One sample per item (NNCF counts items), by input name or else by position."""
    import numpy as np

    values = list(data.values())
    arrays = [np.asarray(data[n] if n in data else values[i]) for i, n in enumerate(names)]
    # real-valued inputs as f32; token ids and masks keep their integer type (cast to float, OpenVINO
    # refuses them for an i64 port)
    arrays = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in arrays]
    count = min(int(arrays[0].shape[0]), limit)
    if len(arrays) == 1:
        return [arrays[0][i : i + 1] for i in range(count)]
    return [tuple(a[i : i + 1] for a in arrays) for i in range(count)]
