"""Precision fallback (as TFLite's selective quantization and NNCF's accuracy control do it):
re-run the lossy conversion with the most sensitive layers kept in fp32, one layer at a time.

The fp32 graph is the source's ONNX IR, exported like the target was; the lossy step's converter
and options come from the target's sidecar. Layers are ranked by how much error they add
(the jump in relative L2 error over the layer before, from localization).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from convrepair.repair.outcome import Attempt

FALLBACK_CONVERTERS = ("onnx-int8", "onnx-fp16")


def sensitivity_ranking(localization: dict[str, Any]) -> list[str]:
    """Source layer names, the layer that adds the most error first (dense/conv layers only). A
    layer that adds none on the localization samples is still a candidate, ranked last: the
    sampled walk need not see the error the held-out split sees."""
    rows = [r for r in localization["layers"] if r["rel_l2"] is not None]
    ranked, previous = [], 0.0
    for row in rows:
        ranked.append((row["rel_l2"] - previous, row["source_layer"], row["kind"]))
        previous = row["rel_l2"]
    return [name for added, name, kind in sorted(ranked, reverse=True) if kind in ("conv", "dense")]


def lossy_step(sidecar) -> Any:
    for step in reversed(sidecar.steps if sidecar else []):
        if step.converter in FALLBACK_CONVERTERS:
            return step
    return None


def requantize(registry, fp32_path, output_path, step, keep_fp32: list[str], target_path) -> dict[str, Any]:
    """Run the target's lossy conversion again, through the same converter plugin, on the fp32
    graph with `keep_fp32` nodes left out; a static int8 step gets the calibration data it kept."""
    from convrepair.convert import kept_calibration
    from convrepair.model import model_ref
    from convrepair.plugins import ConvertRequest

    converter = registry.converters[step.converter]
    options = dict(step.options)
    options["keep_fp32"] = ",".join(keep_fp32)
    calibration = None
    if step.details.get("mode") == "static":
        options["mode"] = "static"
        calibration = kept_calibration(target_path, step)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT warns on root
    notes = converter.convert(ConvertRequest(model_ref(fp32_path, registry), output_path, options, None, calibration))
    return {"converter": step.converter, "kept_fp32": list(keep_fp32), **notes.details}


def over_budget(started: float, budget_seconds: float, phase: str, done: list[str], planned: list[str],
                attempts: list) -> bool:
    """True (and a refused attempt saying where the fallback stopped) once `budget_seconds` have
    passed since `started`: the fallback starts no step past its budget, and says so."""
    spent = time.perf_counter() - started
    if spent < budget_seconds:
        return False
    left = [layer for layer in planned if layer not in done]
    attempts.append(Attempt("precision_fallback", False,
                            f"stopped at --budget-seconds {budget_seconds:g} after {spent:.1f} s: {len(done)} of "
                            f"{len(planned)} layer(s) {phase}; not tried: {', '.join(left)}",
                            seconds=spent, cost={"stopped_by_budget": True, "budget_seconds": budget_seconds,
                                                 "phase": phase, "done": list(done), "not_tried": left}))
    return True
