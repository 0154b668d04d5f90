"""Layer-wise fault localization across frameworks.

Both models are brought to a common IR (ONNX), their layers aligned, and the aligned pairs walked
in topological order on the flipped samples plus as many agreeing ones. The first pair whose
output diverges while its input still agrees is the candidate; it is confirmed in isolation
(shadow mode: the target's segment fed the *source's* input), then explained by `faults`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.data import Dataset, feeds_for
from convrepair.errors import BadInput
from convrepair.localize.align import align
from convrepair.localize.faults import Fault, FaultContext, explain, static_diff
from convrepair.localize.graph import GraphView
from convrepair.localize.inputs import compare_first_inputs
from convrepair.localize.ir import export_options
from convrepair.localize.walk import LayerRow, first_jump, shadow_run, walk
from convrepair.model import TensorSpec

if TYPE_CHECKING:
    from convrepair.job import JobContext, ModelHandle

# rel_l2 above which a layer's output counts as diverged, by the target's precision.
DIVERGENCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.1}
# rel_l2 within which the first layer's inputs agree: rounding to the precision is no input fault
# (an fp16 graph pads and casts its input: ×1 ± 1e-7 is rounding, not preprocessing).
INPUT_AGREEMENT = {"fp32": 1e-4, "bf16": 1e-2, "fp16": 2e-3, "int8": 2e-2}
MAX_SAMPLES = 64  # flipped samples used, and as many agreeing ones


@dataclass
class Localization:
    first_divergent: dict[str, Any] | None
    fault: Fault | None  # None: nothing diverges
    layers: list[LayerRow]
    ir: dict[str, Any]
    samples: dict[str, int]
    shadow: dict[str, Any] | None = None
    unaligned: dict[str, list[str]] = field(default_factory=dict)
    static_diff: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "first_divergent": self.first_divergent,
            "fault": self.fault.to_json() if self.fault else None,
            "layers": [row.to_json() for row in self.layers],
            "shadow": self.shadow,
            "ir": self.ir,
            "samples": self.samples,
            "unaligned": self.unaligned,
            "static_diff": self.static_diff,
        }


def localization_samples(dataset: Dataset, flips: list[int], seed: int) -> tuple[Dataset, dict[str, int]]:
    rng = np.random.default_rng(seed)
    flipped = np.asarray(sorted(flips)[:MAX_SAMPLES], dtype=np.int64)
    others = np.setdiff1d(np.arange(len(dataset)), flipped)
    count = min(len(others), max(len(flipped), 16), MAX_SAMPLES)
    agreeing = np.sort(rng.choice(others, size=count, replace=False)) if count else np.array([], dtype=np.int64)
    chosen = np.concatenate([flipped, agreeing])
    return dataset.take(chosen), {"flipped": int(len(flipped)), "agreeing": int(len(agreeing))}


def onnx_feeds(model, layouts: list[str], dataset: Dataset) -> dict[str, np.ndarray]:
    import onnx

    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for index, value in enumerate(v for v in model.graph.input if v.name not in initializers):
        elem = value.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "float32"
        layout = layouts[index] if index < len(layouts) else dataset.layouts[index]
        specs.append(TensorSpec(value.name, (), dtype, layout))
    feeds = feeds_for(specs, dataset)
    return {spec.name: feeds[spec.name].astype(spec.dtype) for spec in specs}


def localize(
    job: JobContext,
    source: ModelHandle,
    target: ModelHandle,
    dataset: Dataset,
    flips: list[int],
    discrepant: bool,
    seed: int = 0,
) -> Localization:
    """Localize on the job's models: their ONNX IRs are exported (and parsed) once per job."""
    precision = target.precision
    threshold = DIVERGENCE.get(precision, DIVERGENCE["fp32"])
    samples, counts = localization_samples(dataset, flips, seed)
    # Export the source the way the target was exported (FetaFix compares like with like).
    options = export_options(target.sidecar)
    source_ir = job.onnx_ir(source, samples, options)
    try:
        target_ir = job.onnx_ir(target, samples, options)
    except BadInput:  # no ONNX IR of the target: walk by name where its runtime returns its own intermediates
        from convrepair.localize import by_name

        if not by_name.supports(job.runner(target)):
            raise
        return by_name.localize_by_name(job, source, target, samples, counts, source_ir, discrepant, threshold)
    ir_info = {
        "source": {"origin": source_ir.origin, "fidelity_max_abs": source_ir.fidelity_max_abs,
                   "fidelity_rel_l2": source_ir.fidelity_rel_l2, "threshold_rel_l2": ir_threshold(source.precision)},
        "target": {"origin": target_ir.origin, "fidelity_max_abs": target_ir.fidelity_max_abs,
                   "fidelity_rel_l2": target_ir.fidelity_rel_l2, "threshold_rel_l2": threshold},
    }
    unfaithful = _unfaithful_ir(ir_info, source.precision, precision)
    if unfaithful is not None:  # walking it would localize the exporter's error, not the conversion's
        return Localization(None, unfaithful, [], ir_info, counts)
    (s_model, source_view), (t_model, target_view) = job.graph(source_ir.path), job.graph(target_ir.path)
    layout_changed = layouts_differ(source_ir.layouts, target_ir.layouts)
    s_feeds = onnx_feeds(s_model, source_ir.layouts or samples.layouts, samples)
    t_feeds = onnx_feeds(t_model, target_ir.layouts or samples.layouts, samples)
    alignment = align(source_view.layers(), target_view.layers())
    _prefer_shared_names(alignment.pairs, target_view)
    for s_layer, t_layer in alignment.pairs:  # int8 layers are compared as real numbers, not raw integers
        s_layer.tensor, t_layer.tensor = source_view.real_tensor(s_layer.tensor), target_view.real_tensor(t_layer.tensor)
    alignment.pairs += _output_pairs(source_view, target_view, alignment.pairs)
    unaligned = {
        key: [layer.node.name for layer in layers]
        for key, layers in (("source_only", alignment.source_only), ("target_only", alignment.target_only))
        if layers
    }
    input_evidence = compare_first_inputs(source_view, target_view, alignment.pairs, s_model, t_model, s_feeds, t_feeds,
                                           INPUT_AGREEMENT.get(precision, INPUT_AGREEMENT["fp32"]),
                                           dict(zip(target_view.inputs, target_ir.layouts or samples.layouts)))
    rows, first_index = walk(alignment.pairs, source_view, s_model, t_model, s_feeds, t_feeds, threshold)
    if first_index is None and discrepant:
        first_index = first_jump(rows)
    # Fused pairs (diverged, then agreeing again) stay in: a fault the next layer damps hides there.
    # They are marked, since a pair with BatchNorm folded in differs in its weights by design.
    static = static_diff(source_view, target_view, alignment.pairs, precision, layout_changed)
    fused = {row.target_layer for row in rows if row.status == "fused"}
    for entry in static:
        entry["fused"] = entry["target_layer"] in fused
    if first_index is None and not (input_evidence and not input_evidence.get("agree", True)):
        fault = None
        if discrepant and precision != "fp32":
            fault = Fault("precision", f"the target runs in {precision}; each layer stays within rel_l2 "
                          f"{threshold} of the source, and the small errors add up at the outputs",
                          {"precision": precision, "threshold_rel_l2": threshold})
        elif discrepant:
            fault = Fault("unknown", "the outputs differ but no aligned layer diverges beyond rel_l2 "
                          f"{threshold} on the localization samples and no parameter or attribute differs: "
                          "what remains looks like float rounding (is the tolerance tighter than the model's own "
                          "float noise?)", {"threshold_rel_l2": threshold})
        first = None
        if discrepant and (fault is None or fault.type in ("unknown", "precision")):
            first, fault = _from_static_diff(static, alignment.pairs, rows) or (None, fault)
        return Localization(first, fault, rows, ir_info, counts, None, unaligned, static)
    index = first_index if first_index is not None else 0
    pair = alignment.pairs[index]
    end_to_end = rows[index].diff.rel_l2 if rows[index].diff else None
    shadow = shadow_run(alignment.pairs, index, s_model, t_model, s_feeds, t_feeds, end_to_end)
    rows[index].status = "diverged"
    explained = _explained_pair(alignment.pairs, rows, index, (source_view, target_view))
    context = FaultContext(source_view, target_view, explained, input_evidence, precision, _unaligned_in(alignment, explained),
                           layout_changed)
    fault = explain(context)
    if fault.type in ("unknown", "precision") and discrepant:  # the static diff names a difference elsewhere: that is the lead
        found = _from_static_diff(static, alignment.pairs, rows)
        if found is not None:
            return Localization(found[0], found[1], rows, ir_info, counts, shadow, unaligned, static)
    first = {
        "source_layer": pair[0].node.name,
        "target_layer": pair[1].node.name,
        "kind": pair[0].kind,
        "node": fault.node or pair[1].node.name,  # the op at fault, where the explanation names one
        "metric": rows[index].diff.to_json() if rows[index].diff else None,
    }
    return Localization(first, fault, rows, ir_info, counts, shadow, unaligned, static)


def _explained_pair(pairs, rows, index: int, views: tuple[GraphView, GraphView]):
    """The divergent pair with each segment widened to everything its layer depends on back to
    checkpoints that agree: a layer the target lost (a Relu, a Softmax; unaligned) or an op in
    another branch that feeds a Concat sits in that cone and is what differs."""
    from dataclasses import replace

    widened = []
    for side, view in enumerate(views):
        agreeing = {pair[side].tensor for pair, row in zip(pairs, rows) if row.status in ("ok", "fused")}
        layer = pairs[index][side]
        trailing = [n for n in layer.segment if n.index > layer.node.index]  # a bias Add after the last layer
        widened.append(replace(layer, segment=view.cone(layer.node, agreeing) + trailing))
    return widened[0], widened[1]


def _unaligned_in(alignment, pair) -> dict[str, list[str]]:
    """The layers left without a partner inside the explained pair's segments."""
    out = {}
    for key, layers, side in (("source_only", alignment.source_only, 0), ("target_only", alignment.target_only, 1)):
        inside = {node.index for node in pair[side].segment}
        names = [layer.node.name for layer in layers if layer.node.index in inside]
        if names:
            out[key] = names
    return out


def _prefer_shared_names(pairs, target_view: GraphView) -> None:
    """Where the target still has a tensor named like the source's checkpoint, compare that one.

    Quantizers and fp16 converters keep the original names on the float results they rebuild
    (ConvInteger → Cast → Mul → Add ends in the Conv's old output name), so the shared name is the
    tensor that means the same thing.
    """
    for source_layer, target_layer in pairs:
        if source_layer.tensor != target_layer.tensor and source_layer.tensor in target_view.producer:
            target_layer.tensor = source_layer.tensor


def _output_pairs(source_view: GraphView, target_view: GraphView, pairs) -> list:
    """The graph outputs as the last checkpoints, so every op belongs to a compared segment: a bias
    Add, a Mul, a Reshape or a Softmax after the last aligned layer is localized to that tail."""
    from convrepair.localize.graph import Layer

    extra = []
    if not pairs:
        return extra
    last_s, last_t = pairs[-1]
    for s_name, t_name in zip(source_view.outputs, target_view.outputs):
        if s_name == last_s.tensor and t_name == last_t.tensor:
            continue
        s_node, t_node = source_view.producer.get(s_name), target_view.producer.get(t_name)
        if s_node is None or t_node is None:
            continue
        s_tail = [n for n in source_view.nodes if last_s.node.index < n.index <= s_node.index]
        t_tail = [n for n in target_view.nodes if last_t.node.index < n.index <= t_node.index]
        extra.append((Layer(len(pairs) + len(extra), s_node, s_name, s_tail, "output"),
                      Layer(len(pairs) + len(extra), t_node, t_name, t_tail, "output")))
    return extra


def ir_threshold(precision: str) -> float:
    """An IR further from its model than a layer may diverge cannot be walked layer by layer."""
    return DIVERGENCE.get(precision, DIVERGENCE["fp32"])


def layouts_differ(source: list[str], target: list[str]) -> bool:
    """A layout change is recorded: both sidecars name input layouts and they differ."""
    return bool(source and target) and [s.upper() for s in source] != [t.upper() for t in target]


def _unfaithful_ir(ir_info: dict[str, Any], source_precision: str, precision: str) -> Fault | None:
    for role, model_precision in (("source", source_precision), ("target", precision)):
        info = ir_info[role]
        limit = ir_threshold(model_precision)
        if info["fidelity_rel_l2"] > limit:
            return Fault("ir_unfaithful",
                         f"the {role}'s ONNX IR ({info['origin']}) differs from the {role} model by rel_l2 "
                         f"{info['fidelity_rel_l2']:.3g} (max |Δ| {info['fidelity_max_abs']:.3g}), above {limit:g}: "
                         "a layer-wise walk of it would localize the export's error, not the conversion's",
                         {"model": role, **info, "threshold_rel_l2": limit})
    return None


def _from_static_diff(static, pairs, rows):
    """(first_divergent, Fault) from the static diff when the walk named no layer; None when it
    names nothing. The verdict is never `unknown` (nor `precision`) while a parameter or attribute
    differs beyond the precision's tolerance. Fused pairs (BatchNorm folded in: weights differ by
    design) are shown in the static diff but never lead."""
    static = [entry for entry in static if not entry.get("fused")]
    if static:
        worst = static[0]
        index = next((i for i, (s, t) in enumerate(pairs) if t.node.name == worst["target_layer"]), None)
        if index is not None:
            rows[index].status = "diverged"
        kind = pairs[index][0].kind if index is not None else None
        metric = rows[index].diff.to_json() if index is not None and rows[index].diff else None
        first = {"source_layer": worst["source_layer"], "target_layer": worst["target_layer"], "kind": kind,
                 "node": worst.get("node") or worst["target_layer"], "metric": metric}
        fault = Fault(worst["type"], worst["detail"] + " (named by the static diff: no layer crossed the divergence threshold)",
                      worst.get("evidence", {}), worst.get("node"))
        return first, fault
    return None  # (different op counts alone prove nothing: exporters write GAP as ReduceMean and so on)
