"""Precision fallback (as TFLite's selective quantization and NNCF's accuracy control do it):
re-run the lossy conversion with the most sensitive layers kept in fp32, one layer at a time.

The fp32 graph is the source's ONNX IR, exported like the target was; the lossy step's converter
and options come from the target's sidecar. Layers are ranked by how much error they add
(the jump in relative L2 error over the layer before, from localization).
"""

from __future__ import annotations

import logging
from typing import Any

FALLBACK_CONVERTERS = ("onnx-int8", "onnx-fp16")


def sensitivity_ranking(localization: dict[str, Any]) -> list[str]:
    """Source layer names, the layer that adds the most error first (dense/conv layers only)."""
    rows = [r for r in localization["layers"] if r["rel_l2"] is not None]
    ranked, previous = [], 0.0
    for row in rows:
        ranked.append((row["rel_l2"] - previous, row["source_layer"], row["kind"]))
        previous = row["rel_l2"]
    return [name for added, name, kind in sorted(ranked, reverse=True) if kind in ("conv", "dense") and added > 0]


def lossy_step(sidecar) -> Any:
    for step in reversed(sidecar.steps if sidecar else []):
        if step.converter in FALLBACK_CONVERTERS:
            return step
    return None


def requantize(fp32_path, output_path, step, keep_fp32: list[str]) -> dict[str, Any]:
    """Run the target's lossy conversion again on the fp32 graph, excluding `keep_fp32` nodes."""
    import onnx

    if step.converter == "onnx-int8":
        from onnxruntime import quantization as q

        mode = step.details.get("mode", "dynamic")
        if mode != "dynamic":
            raise ValueError("static int8 fallback needs the calibration data; not kept in the sidecar yet")
        per_channel = bool(step.details.get("per_channel", False))
        # ORT splits a Gemm into `<name>_MatMul` + Add before quantizing: exclude both spellings.
        excluded = [variant for name in keep_fp32 for variant in (name, f"{name}_MatMul")]
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT warns on root
        q.quantize_dynamic(str(fp32_path), str(output_path), weight_type=q.QuantType.QUInt8,
                           per_channel=per_channel, nodes_to_exclude=excluded)
    else:
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True, node_block_list=list(keep_fp32))
        onnx.save(model, str(output_path))
    return {"converter": step.converter, "kept_fp32": list(keep_fp32)}
