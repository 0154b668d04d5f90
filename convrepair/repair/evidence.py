"""The held-out evidence as arrays: the worker writes the outputs of the source, the target and
the repaired model on the held-out split as `.npy` files; the parent, which never runs a model,
reads them back (no pickle, shapes and dtypes checked), counts the failing samples with the one
judge, and names the verdict (`outcome.final_verdict`). Pure numpy: no framework is imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from convrepair.errors import BadInput
from convrepair.repair.outcome import HeldOut

MANIFEST = "held_out.json"
ROLES = ("source", "target", "repaired")
MAX_FILES = 3 * 64  # at most 64 outputs per model


def failing_mask(source: list[np.ndarray], other: list[np.ndarray], names: list[str], tolerance: Any,
                 classifier: bool) -> np.ndarray:
    """Per sample: does `other` fail against `source`? A changed top-1 label (class scores), a
    relative error over the noise-floor limit (fp32 by default), or a value outside the enforced
    atol + rtol·|source| (given tolerances, reduced-precision non-classifiers)."""
    n = len(source[0])
    bad = np.zeros(n, dtype=bool)
    if classifier:
        bad |= source[0].reshape(n, -1).argmax(axis=1) != other[0].reshape(n, -1).argmax(axis=1)
    floor = (tolerance.noise_floor or {}).get("outputs") if tolerance.noise_floor else None
    for index, (s, t) in enumerate(zip(source, other)):
        s64, t64 = s.astype(np.float64).reshape(n, -1), t.astype(np.float64).reshape(n, -1)
        if floor is not None:
            rel = np.linalg.norm(s64 - t64, axis=1) / np.maximum(np.linalg.norm(s64, axis=1), 1e-30)
            bad |= rel > floor[index]["limit"]
        elif tolerance.enforced or not classifier:
            atol, rtol = tolerance.for_output(names[index])
            bad |= (np.abs(s64 - t64) > atol + rtol * np.abs(s64)).any(axis=1)
    return bad


def judged_discrepant(source: list[np.ndarray], other: list[np.ndarray], ids: np.ndarray, names: list[str], tolerance: Any,
                      classifier: bool) -> bool:
    """The judge's verdict (discrepant or not) on these arrays: the same functions `check` uses."""
    from convrepair.compare import Accumulator
    from convrepair.judge import judge

    acc = Accumulator(names, names, 1, tolerance.atol, tolerance.rtol, classifier, per_output=tolerance.per_output)
    acc.add(source, other, ids, None)
    return bool(judge(acc.result(), tolerance))


def held_out_from_arrays(source: list[np.ndarray], target: list[np.ndarray], repaired: list[np.ndarray] | None,
                         ids: np.ndarray, names: list[str], tolerance: Any, classifier: bool,
                         inconclusive: list[str] | None = None) -> HeldOut:
    """`HeldOut` counts from the three models' outputs on the same held-out samples."""
    ids = np.asarray(ids)
    fail_before = failing_mask(source, target, names, tolerance, classifier)
    held = HeldOut(n=int(len(np.unique(ids))), failing_before=sorted(int(i) for i in ids[fail_before]),
                   discrepant_before=judged_discrepant(source, target, ids, names, tolerance, classifier),
                   inconclusive=list(inconclusive or []),
                   label_agreement_before=_agreement(source, target) if classifier else None)
    if repaired is not None:
        fail_after = failing_mask(source, repaired, names, tolerance, classifier)
        held.failing_after = sorted(int(i) for i in ids[fail_after])
        held.discrepant_after = judged_discrepant(source, repaired, ids, names, tolerance, classifier)
        held.label_agreement_after = _agreement(source, repaired) if classifier else None
    return held


def _agreement(source: list[np.ndarray], other: list[np.ndarray]) -> float:
    n = len(source[0])
    return float((source[0].reshape(n, -1).argmax(axis=1) == other[0].reshape(n, -1).argmax(axis=1)).mean()) if n else 0.0


def write_evidence(folder: Path, outputs: dict[str, list[np.ndarray]], ids: np.ndarray, names: list[str],
                   tolerance: dict[str, Any], classifier: bool, inconclusive: list[str]) -> None:
    """The worker's side: each model's held-out outputs as `<role>_<k>.npy`, and a manifest of
    what the parent must find (and the worker-reported tolerance and guard)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, arrays in outputs.items():
        files[role] = []
        for k, array in enumerate(arrays):
            name = f"{role}_{k}.npy"
            np.save(folder / name, np.ascontiguousarray(array), allow_pickle=False)
            files[role].append(name)
    np.save(folder / "ids.npy", np.asarray(ids, dtype=np.int64), allow_pickle=False)
    (folder / MANIFEST).write_text(json.dumps({"files": files, "names": names, "tolerance": tolerance,
                                               "classifier": classifier, "inconclusive": inconclusive}))


def read_evidence(folder: Path) -> tuple[dict[str, list[np.ndarray]], np.ndarray, dict[str, Any]]:
    """The parent's side: the arrays back, with no pickle, every shape checked: each model gives
    one array per output, with one row per held-out sample, and the source's shapes."""
    where = Path(folder) / MANIFEST
    try:
        manifest = json.loads(where.read_text())
        ids = np.load(Path(folder) / "ids.npy", allow_pickle=False)
        files = manifest["files"]
        outputs: dict[str, list[np.ndarray]] = {}
        for role in files:
            if role not in ROLES or not isinstance(files[role], list) or len(files[role]) > MAX_FILES // 3:
                raise ValueError(f"unexpected entry {role!r}")
            outputs[role] = []
            for k, name in enumerate(files[role]):
                if name != f"{role}_{k}.npy":
                    raise ValueError(f"unexpected file name {name!r}")
                outputs[role].append(np.load(Path(folder) / name, allow_pickle=False))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"the worker's held-out outputs cannot be read ({exc})", where) from None
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or "source" not in outputs or "target" not in outputs:
        raise BadInput("the worker's held-out outputs are incomplete", where)
    reference = outputs["source"]
    for role, arrays in outputs.items():
        if len(arrays) != len(reference) or any(
                a.shape != r.shape or a.dtype.kind not in "fiub" or len(a) != len(ids) for a, r in zip(arrays, reference)):
            raise BadInput(f"the worker's held-out outputs of the {role} do not have the source's shapes", where)
    return outputs, ids, manifest


def tolerance_from_json(data: dict[str, Any]) -> Any:
    """The `Tolerance` a held-out check used, back from its JSON (worker-reported)."""
    from convrepair.judge import Tolerance

    per_output = data.get("per_output") or None
    return Tolerance(float(data["atol"]), float(data["rtol"]), bool(data["enforced"]), str(data["origin"]),
                     data.get("noise_floor"),
                     {k: (float(v["atol"]), float(v["rtol"])) for k, v in per_output.items()} if per_output else None)


def parent_held_out(folder: Path) -> HeldOut:
    """The held-out counts the parent signs: recomputed here from the arrays alone."""
    outputs, ids, manifest = read_evidence(folder)
    tolerance = tolerance_from_json(manifest["tolerance"])
    return held_out_from_arrays(outputs["source"], outputs["target"], outputs.get("repaired"), ids,
                                [str(n) for n in manifest["names"]], tolerance, bool(manifest["classifier"]),
                                [str(r) for r in manifest.get("inconclusive") or []])
