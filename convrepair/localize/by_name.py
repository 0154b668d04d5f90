"""Layer-wise localization through the target runtime's own intermediates, fetched by ONNX name.

A target with no way back to ONNX (an OpenVINO IR) still keeps the ONNX tensor names of the
graph it was converted from, and its runner can return any of them (`probe`). So the source's
ONNX IR — exported the way the target's ONNX step was — is walked checkpoint by checkpoint in
topological order: the source's activations from ONNX Runtime, the target's from its own runtime
under the same names. A source checkpoint whose name the target lost (an op it fused or dropped)
joins the next one's segment. The first checkpoint that diverges while those it reads agree is
the fault layer; `runtime_ops` types it from the runtime's ops as far as the IR shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convrepair.data import feeds_for
from convrepair.localize.capture import sweep
from convrepair.localize.faults import Fault
from convrepair.localize.graph import GraphView, Layer
from convrepair.localize.runtime_ops import RuntimeGraph, explain_segment, static_differences
from convrepair.localize.tensors import RunningDiff
from convrepair.localize.walk import SWEEP_BATCH, LayerRow, first_jump, layer_statuses
from convrepair.events import track

if TYPE_CHECKING:
    from convrepair.data import Dataset
    from convrepair.job import JobContext, ModelHandle
    from convrepair.localize import Localization
    from convrepair.onnx_ir import OnnxIR


def supports(runner) -> bool:
    """Can this runner return its internal tensors by ONNX name (and describe its ops)?"""
    return all(callable(getattr(runner, name, None)) for name in ("probe", "tensor_names", "graph_ops"))


def method(runner, fmt: str) -> str:
    return f"layer-wise via {getattr(runner, 'runtime_name', fmt)} intermediates (tensors fetched by their ONNX names)"


def localize_by_name(job: JobContext, source: ModelHandle, target: ModelHandle, samples: Dataset, counts: dict[str, int],
                     source_ir: OnnxIR, discrepant: bool, threshold: float) -> Localization:
    from convrepair.localize import Localization, ir_threshold, onnx_feeds

    runner = job.runner(target)
    precision = target.precision
    s_model, view = job.graph(source_ir.path)
    runtime = RuntimeGraph(runner.graph_ops(), set(runner.tensor_names()))
    checkpoints, missing = _checkpoints(view, runtime.tensors)
    ir_info: dict[str, Any] = {
        "method": method(runner, target.ref.format),
        "source": {"origin": source_ir.origin, "fidelity_max_abs": source_ir.fidelity_max_abs,
                   "fidelity_rel_l2": source_ir.fidelity_rel_l2, "threshold_rel_l2": ir_threshold(source.precision)},
        "target": {"origin": method(runner, target.ref.format), "fidelity_max_abs": None, "fidelity_rel_l2": None,
                   "fidelity": "not applicable: the target's own runtime values are compared, no IR stands between",
                   "threshold_rel_l2": threshold, "checkpoints_compared": len(checkpoints),
                   "source_checkpoints_without_a_target_tensor": missing},
    }
    limit = ir_threshold(source.precision)
    if source_ir.fidelity_rel_l2 > limit:
        fault = Fault("ir_unfaithful", f"the source's ONNX IR ({source_ir.origin}) differs from the source model by rel_l2 "
                      f"{source_ir.fidelity_rel_l2:.3g}, above {limit:g}: a walk of it would localize the export's error",
                      {"model": "source", **ir_info["source"]})
        return Localization(None, fault, [], ir_info, counts)
    if not checkpoints:
        fault = Fault("unknown", f"output-level only: the {target.ref.format} model keeps none of the source IR's "
                      "checkpoint tensor names, so no layer could be fetched from it", {})
        return Localization(None, fault, [], ir_info, counts)
    s_feeds = onnx_feeds(s_model, source_ir.layouts or samples.layouts, samples)
    rows = _walk(view, s_model, s_feeds, runner, samples, checkpoints, threshold, runtime)
    first = next((i for i, row in enumerate(rows) if row.status == "diverged"), None)
    if first is None and discrepant:
        first = first_jump(rows)
    static = static_differences(view, runtime, precision)
    if first is None:
        return Localization(*_no_divergent_layer(static, discrepant, precision, threshold), rows, ir_info, counts,
                            _NO_SHADOW, {}, static)
    layer = checkpoints[first]
    agreeing = {cp.tensor for cp, row in zip(checkpoints, rows) if row.status in ("ok", "fused")}
    fault = explain_segment(view, runtime, layer, agreeing, precision)
    if fault.type == "unknown" and static:
        fault = _static_fault(static) or fault
    first_divergent = {"source_layer": layer.node.name, "target_layer": rows[first].target_layer, "kind": layer.kind,
                       "node": fault.node or layer.node.name, "metric": rows[first].diff.to_json() if rows[first].diff else None}
    return Localization(first_divergent, fault, rows, ir_info, counts, _NO_SHADOW, {}, static)


_NO_SHADOW = {"confirmed": None, "reason": "not run: the target's runtime computes its own segments; the walk fed both "
              "models the same inputs and compared each checkpoint under its ONNX name"}


def _checkpoints(view: GraphView, names: set[str]) -> tuple[list[Layer], list[str]]:
    """The source's layer checkpoints whose tensor the target also carries, each with the nodes
    since the previous one (a checkpoint the target lost joins the next one's segment), then the
    graph outputs as the last checkpoints."""
    found: list[Layer] = []
    pending: list = []
    missing = []
    for layer in view.layers():
        pending += layer.segment
        if layer.tensor in names:
            found.append(Layer(len(found), layer.node, layer.tensor, pending, layer.kind))
            pending = []
        else:
            missing.append(layer.tensor)
    last = found[-1].tensor if found else None
    for output in view.outputs:
        node = view.producer.get(output)
        if output != last and output in names and node is not None:
            start = found[-1].node.index if found else -1
            tail = [n for n in view.nodes if start < n.index <= node.index]
            found.append(Layer(len(found), node, output, tail, "output"))
    return found, missing


def _walk(view, s_model, s_feeds, runner, samples, checkpoints, threshold, runtime) -> list[LayerRow]:
    """Every checkpoint compared in one pass, SWEEP_BATCH samples at a time (one compile of the
    target with its extra outputs, one ONNX Runtime session)."""
    names = list(dict.fromkeys(cp.tensor for cp in checkpoints))
    running = {name: RunningDiff() for name in names}
    probe = runner.probe(names)
    total = len(samples)
    batches = sweep(s_model, names, s_feeds, SWEEP_BATCH)
    for start, s_values in track(enumerate(batches), f"localizing {len(names)} layers on {total} samples",
                                 total=-(-total // SWEEP_BATCH)):
        begin = start * SWEEP_BATCH
        t_values = probe(feeds_for(runner.inputs, samples, begin, min(begin + SWEEP_BATCH, total)))
        for name in names:
            if name in t_values:
                running[name].add(s_values[name], t_values[name])
            else:
                running[name].comparable = False
    diffs = [running[cp.tensor].result() for cp in checkpoints]
    statuses, _ = layer_statuses(view, checkpoints, diffs, threshold)
    return [LayerRow(cp.node.name, runtime.producer_name(cp.tensor), cp.kind, diff, status)
            for cp, diff, status in zip(checkpoints, diffs, statuses)]


def _static_fault(static: list[dict[str, Any]]) -> Fault | None:
    worst = static[0] if static else None
    if worst is None:
        return None
    return Fault(worst["type"], worst["detail"] + " (named by the static comparison: no layer crossed the divergence "
                 "threshold)", worst.get("evidence", {}), worst.get("node"))


def _no_divergent_layer(static, discrepant: bool, precision: str, threshold: float):
    """(first_divergent, fault) when no checkpoint diverges."""
    if not discrepant:
        return None, None
    found = _static_fault(static)
    if found is not None:
        return {"source_layer": found.node, "target_layer": found.node, "kind": None, "node": found.node,
                "metric": None}, found
    if precision != "fp32":
        return None, Fault("precision", f"the target runs in {precision}; each checkpoint stays within rel_l2 {threshold} "
                           "of the source, and the small errors add up at the outputs",
                           {"precision": precision, "threshold_rel_l2": threshold})
    return None, Fault("unknown", f"the outputs differ but no checkpoint fetched by name diverges beyond rel_l2 {threshold} "
                       "and no constant or attribute the target keeps differs", {"threshold_rel_l2": threshold})
