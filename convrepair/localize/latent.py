"""Latent faults: parameter and attribute differences the sampled outputs did not reveal.

A zeroed bias that moves the outputs less than the conversion's own rounding passes every
sampled check, yet it is a real difference a reviewer should see (MobileNetV2's `Conv__423`).
The static audit compares every aligned pair of the two ONNX IRs (cheap: no activations), then
measures each difference's effect by putting that one difference back on the target's IR and
running it on a few samples. The verdict is not changed; `check --strict` makes it count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.data import Dataset
from convrepair.localize.align import align
from convrepair.localize.faults import static_diff

if TYPE_CHECKING:
    from convrepair.job import JobContext, ModelHandle

MAX_MEASURED = 8  # differences whose effect is measured (each one a run of the target's IR)
EFFECT_SAMPLES = 32


@dataclass
class LatentAudit:
    ran: bool
    why: str
    faults: list[dict[str, Any]] = field(default_factory=list)  # [{node, type, detail, effect}]

    def to_json(self) -> dict[str, Any]:
        return {"ran": self.ran, "why": self.why, "count": len(self.faults)}


def irs_at_hand(source: ModelHandle, target: ModelHandle) -> bool:
    """Both IRs cost nothing more: ONNX models are their own IR; others were exported this job."""
    return all(handle.ref.format == "onnx" or handle.irs for handle in (source, target))


def audit(job: JobContext, source: ModelHandle, target: ModelHandle, dataset: Dataset, explained: set[str] | None = None,
          seed: int = 0) -> LatentAudit:
    """The static audit over every aligned pair; differences at `explained` nodes (what localization
    already named) are left out."""
    from convrepair.localize import layouts_differ, onnx_feeds
    from convrepair.localize.ir import export_options

    rng = np.random.default_rng(seed)
    samples = dataset.take(np.sort(rng.choice(len(dataset), size=min(EFFECT_SAMPLES, len(dataset)), replace=False)))
    options = export_options(target.sidecar)
    source_ir, target_ir = job.onnx_ir(source, samples, options), job.onnx_ir(target, samples, options)
    (_, s_view), (t_model, t_view) = job.graph(source_ir.path), job.graph(target_ir.path)
    alignment = align(s_view.layers(), t_view.layers())
    pairs = [pair for pair in alignment.pairs if not _folded(pair, alignment)]
    found = static_diff(s_view, t_view, pairs, target.precision, layouts_differ(source_ir.layouts, target_ir.layouts))
    found = [entry for entry in found if (entry.get("node") or entry["target_layer"]) not in (explained or set())]
    feeds = onnx_feeds(t_model, target_ir.layouts or samples.layouts, samples)
    baseline = _run(t_model, feeds)
    faults = []
    for index, entry in enumerate(found):
        effect = _effect(t_model, s_view, entry, feeds, baseline) if index < MAX_MEASURED else {"measured": False}
        faults.append({"node": entry.get("node") or entry["target_layer"], "type": entry["type"], "detail": entry["detail"],
                       "effect": effect})
    return LatentAudit(True, "static audit of every aligned layer of the two ONNX IRs", faults)


def _folded(pair, alignment) -> bool:
    """A pair followed, on the source's side only, by an unaligned normalization: the target folded
    it in (TFLite, fused exporters), so its weights differ by design."""
    source_layer = pair[0]
    later = [s.node.index for s, _ in alignment.pairs if s.node.index > source_layer.node.index]
    stop = min(later, default=10**9)
    return any(layer.kind == "norm" and source_layer.node.index < layer.node.index < stop for layer in alignment.source_only)


def _run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from convrepair import lean_onnx

    session = lean_onnx.session(model, optimize=True)  # a large model's lean graph runs from its folder
    wanted = {i.name for i in session.get_inputs()}
    return [np.asarray(v, dtype=np.float32) for v in session.run(None, {k: v for k, v in feeds.items() if k in wanted})]


def _effect(model, source_view, entry: dict[str, Any], feeds, baseline: list[np.ndarray]) -> dict[str, Any]:
    """How much the target's outputs move when this one difference is put back (the source's value)."""
    from convrepair.repair.restore import RestoreUnavailable, restore

    localization = {"fault": {k: entry[k] for k in ("type", "detail", "node", "evidence")},
                    "first_divergent": {"source_layer": entry["source_layer"], "target_layer": entry["target_layer"],
                                        "node": entry.get("node")}}
    try:
        restored, _ = restore(model, source_view, localization)
        after = _run(restored, feeds)
    except (RestoreUnavailable, KeyError, ValueError, IndexError, StopIteration, TypeError) as exc:
        return {"measured": False, "why": str(exc)[:200]}
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refusing the changed graph is a finding, not a crash
        return {"measured": False, "why": f"the target with this difference put back does not run: {str(exc)[:160]}"}
    rel, max_abs, changed = 0.0, 0.0, 0
    for before, now in zip(baseline, after):
        norm = float(np.linalg.norm(before))
        rel = max(rel, float(np.linalg.norm(now - before)) / max(norm, 1e-12))
        max_abs = max(max_abs, float(np.abs(now - before).max(initial=0.0)))
        if before.ndim == 2 and before.shape[1] > 1:
            changed = max(changed, int((before.argmax(1) != now.argmax(1)).sum()))
    return {"measured": True, "samples": int(len(baseline[0])) if baseline else 0, "output_rel_l2": rel,
            "output_max_abs": max_abs, "label_changes": changed}


def check_latent(job: JobContext, source: ModelHandle, target: ModelHandle, dataset: Dataset, wanted: bool | None,
                 localization: dict[str, Any] | None, seed: int = 0) -> dict[str, Any]:
    """The check's `latent` and `latent_audit` fields. `wanted`: None audits when both IRs are at
    hand (no export needed), True always (--strict), False never. Never raises for models
    without a graph (a golden file): the audit says why it did not run."""
    from convrepair.errors import BadInput

    if wanted is False:
        result = LatentAudit(False, "not asked for")
    elif wanted is None and not irs_at_hand(source, target):
        result = LatentAudit(False, "the models are not ONNX and no IR was exported in this check (--strict audits them)")
    else:
        fault = (localization or {}).get("fault") or {}
        first = (localization or {}).get("first_divergent") or {}
        explained = {name for name in (fault.get("node"), first.get("node"), first.get("target_layer")) if name}
        try:
            result = audit(job, source, target, dataset, explained, seed)
        except BadInput as exc:
            result = LatentAudit(False, f"no ONNX IR: {exc.one_line()}")
    return {"latent": result.faults, "latent_audit": result.to_json()}
