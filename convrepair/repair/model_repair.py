"""Repair of one model against its labels: plain (its misclassifications) or regression (what
version N gets wrong that version N−1 got right), with a PSO patch on the last dense layer.

Success is judged on a held-out half: failures fixed (repair rate) without breaking more than
`max_break_rate` of the samples it got right (break rate), and accuracy up.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from convrepair.data import load_npz
from convrepair.errors import BadInput
from convrepair.model import model_ref
from convrepair.plugins import PluginRegistry
from convrepair.repair import _write_output, look_through
from convrepair.repair.outcome import SCHEMA, Attempt, RepairConfig
from convrepair.repair.stages import patch_written_back
from convrepair.repair.transfer import CARRIERS
from convrepair.sidecar import read_sidecar

MAX_NEGATIVES = 200


def _onnx_of(registry, ref, sidecar, dataset, workdir):
    from convrepair.job import JobContext
    from convrepair.localize.ir import to_onnx_ir

    with JobContext(registry) as job:  # the IR outlives the job: it is written into `workdir`
        handle = job.model(ref.path, ref.format)
        return to_onnx_ir(job, handle, dataset.take(np.arange(min(64, len(dataset)))), workdir).path


def _rates(pred_before, pred_after, labels, negatives) -> dict[str, float]:
    right_before = pred_before == labels
    fixed = float((pred_after[negatives] == labels[negatives]).mean()) if len(negatives) else 0.0
    broken = float((pred_after[right_before] != labels[right_before]).mean()) if right_before.any() else 0.0
    return {"repair_rate": fixed, "break_rate": broken, "negatives": int(len(negatives)),
            "accuracy_before": float(right_before.mean()), "accuracy_after": float((pred_after == labels).mean())}


def run_model_repair(registry: PluginRegistry, model_path: Path, previous_path: Path | None, out: Path,
                     config: RepairConfig) -> dict[str, Any]:
    import onnx

    from convrepair.localize.graph import GraphView
    from convrepair.repair.patch import last_dense_layer
    from convrepair.repair.pso import SearchConfig
    from convrepair.repair.restore import RestoreUnavailable
    from convrepair.repair.search import labels_of, search_patch
    from convrepair.repair.select import boundary_order

    started = time.perf_counter()
    if config.data is None:
        raise BadInput("repairing a model against its labels needs --data with labels (y)")
    ref = model_ref(model_path, registry)
    if Path(out).resolve() == ref.path.resolve():
        raise BadInput("--out must not overwrite the model", out)
    sidecar = read_sidecar(ref.path)
    with registry.load(ref, sidecar, device="cpu") as runner:
        dataset = load_npz(config.data, runner.inputs)
        if dataset.labels is None:
            raise BadInput("data has no labels ('y'); repairing a model needs them", config.data)
        predicted = labels_of(runner, dataset)
        layouts = [spec.layout for spec in runner.inputs]
    labels = dataset.labels.astype(np.int64)
    mode = "regression" if previous_path is not None else "plain"
    previous_pred = None
    workdir = Path(tempfile.mkdtemp(prefix="convrepair-model-repair-"))
    attempts: list[Attempt] = []
    try:
        history = None
        if previous_path is not None:
            prev_ref = model_ref(previous_path, registry)
            prev_sidecar = read_sidecar(prev_ref.path)
            with registry.load(prev_ref, prev_sidecar, device="cpu") as previous:
                previous_pred = labels_of(previous, dataset)
            history = last_dense_layer(GraphView(onnx.load(str(_onnx_of(registry, prev_ref, prev_sidecar, dataset, workdir))))).weight
        # a .pt2 or Keras model is patched on its ONNX IR, and the patch written back into it
        onnx_path = ref.path if ref.format == "onnx" else (
            _onnx_of(registry, ref, sidecar, dataset, workdir) if ref.format in CARRIERS else None)
        order = np.random.default_rng(config.seed).permutation(len(dataset))
        search_idx, held_idx = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])

        def failures(idx):
            wrong = predicted[idx] != labels[idx]
            if previous_pred is not None:
                wrong &= previous_pred[idx] == labels[idx]  # regressions: right before, wrong now
            return np.nonzero(wrong)[0]

        search_neg, held_neg = failures(search_idx), failures(held_idx)
        output = None
        verdict = "not_repaired"
        held_rates: dict[str, Any] | None = None
        if onnx_path is None:
            attempts.append(Attempt("pso_patch", False, f"patches are written to {', '.join(('onnx', *CARRIERS))} models; "
                                                        f"this model is {ref.format} (convert it first)"))
        elif not len(search_neg):
            attempts.append(Attempt("pso_patch", False, f"no {'regressions' if previous_pred is not None else 'failures'} on the search half"))
        else:
            search = dataset.take(search_idx)
            negatives = search_neg
            if history is None:  # no history: the failures nearest the boundary, far from successes, drive it
                cache_logits = None
                try:
                    from convrepair.localize import onnx_feeds
                    from convrepair.localize.capture import capture

                    model = onnx.load(str(onnx_path))
                    layer = last_dense_layer(GraphView(model))
                    cache_logits = layer.output_logits(layer.float_logits(
                        capture(model, [layer.logits_tensor], onnx_feeds(model, layouts, search))[layer.logits_tensor]))
                except (RestoreUnavailable, KeyError):
                    pass
                if cache_logits is not None:
                    successes = np.nonzero(predicted[search_idx] == labels[search_idx])[0]
                    search_labels = labels[search_idx]
                    ranked = boundary_order(cache_logits[search_neg], search_labels[search_neg],
                                            cache_logits[successes], search_labels[successes])
                    negatives = search_neg[ranked[:MAX_NEGATIVES]]
            t0 = time.perf_counter()
            candidate = None
            try:
                patched, patch, stats = search_patch(
                    onnx.load(str(onnx_path)), history, search, layouts, labels[search_idx], predicted[search_idx],
                    SearchConfig(budget_seconds=config.budget_seconds, seed=config.seed, device=config.device),
                    config.optimiser, negatives=negatives,
                )
            except RestoreUnavailable as exc:
                attempts.append(Attempt("pso_patch", False, str(exc)))
            else:
                candidate = workdir / "patched.onnx"
                onnx.save(patched, str(candidate))
                if ref.format != "onnx":
                    candidate = patch_written_back(onnx_path, candidate, ref.path, ref.format, workdir, patch, attempts, t0)
            if candidate is not None:
                with registry.load(model_ref(candidate, registry), sidecar, device="cpu") as runner:
                    after = labels_of(runner, dataset)
                held_rates = _rates(predicted[held_idx], after[held_idx], labels[held_idx], held_neg)
                search_rates = _rates(predicted[search_idx], after[search_idx], labels[search_idx], search_neg)
                ok = (held_rates["repair_rate"] > 0 and held_rates["break_rate"] <= config.max_break_rate
                      and held_rates["accuracy_after"] > held_rates["accuracy_before"])
                reason = (f"held-out: fixed {held_rates['repair_rate']:.0%} of {len(held_neg)} "
                          f"{'regressions' if mode == 'regression' else 'failures'}, broke {held_rates['break_rate']:.1%} "
                          f"of the successes (allowed {config.max_break_rate:.0%})")
                attempts.append(Attempt("pso_patch", ok, reason, patch, None, None, [], time.perf_counter() - t0,
                                        stats | {"search": search_rates, "held_out": held_rates}, applied=ok))
                if ok:
                    verdict = "repaired"
                    output = _write_output(registry, candidate, out, ref, sidecar, attempts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    models = ([("previous", Path(previous_path))] if previous_path is not None else []) + [("model", ref.path)]
    if output is not None:
        models.append(("repaired", Path(output["path"])))
    lenses = look_through(registry, models, dataset, held_idx, search_idx, config)
    return {
        "schema": SCHEMA,
        "mode": mode,
        "model": {"path": str(ref.path), "format": ref.format, "sha256": ref.sha256},
        "previous": str(previous_path) if previous_path else None,
        "output": output,
        "verdict": verdict,
        "attempts": [a.to_json() for a in attempts],
        "held_out": held_rates,
        "splits": {"search": int(len(order) // 2), "held_out": int(len(order) - len(order) // 2)},
        "seconds": round(time.perf_counter() - started, 3),
        "device": config.device,
        "lenses": lenses,
    }
