"""What a repair is made of and how its attempts are judged: the config, each attempt, the
report, and the rules that keep a change (more agreement, nothing broken) and name the verdict.

`final_verdict` is a pure function of the held-out figures (`HeldOut`): the parent process,
which runs no model, computes it from the arrays the worker returned (importable without any
framework)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.compare import clopper_pearson_upper
from convrepair.repair.cost import size_of

if TYPE_CHECKING:
    from convrepair.check import CheckReport
    from convrepair.lenses import LensConfig
    from convrepair.repair.restore import Patch

SCHEMA = "convrepair.repair/v1"
STRATEGIES = ("auto", "restore", "pso")
PREFERENCES = ("auto", "fast", "exact")
VERDICTS = ("repaired", "improved", "unproven", "already_equivalent", "not_repaired")
SUCCESS = ("repaired", "already_equivalent")  # exit 0; every other verdict exits 1
CONFIDENCE = 0.95  # of the one-sided Clopper–Pearson upper bound on the held-out flip rate
# the data is split once (seeded) into three disjoint parts: attempts are judged on the search
# split, options are chosen (and fallback layers kept) on the selection split, and the verdict
# comes from the held-out split, which no attempt and no choice has seen
SPLITS = {"search": 0.4, "selection": 0.2, "held_out": 0.4}


@dataclass
class RepairConfig:
    data: Path | None = None
    strategy: str = "auto"
    device: str = "auto"
    budget_seconds: float = 300.0
    seed: int = 0
    rounds: int = 5
    samples: int = 100
    max_restores: int = 5
    max_fp32_layers: int = 3
    atol: float | None = None  # tolerances the repaired model must meet (default: check's)
    rtol: float | None = None
    optimiser: str = "pso"  # or "de"
    accept_improvement: bool = False  # accept fewer held-out flips without reaching equivalence
    max_break_rate: float = 0.01  # share of held-out agreeing samples a patch may break
    lenses: LensConfig | None = None  # reliability lenses over source, target and repaired model (held-out half)
    prefer: str = "auto"  # when fallback and patch both work: auto | fast (patch) | exact (fallback)
    max_flip_rate: float = 0.01  # `repaired` needs the one-sided 95% upper bound of the held-out flip rate at or below this
    force: bool = False  # write the target unchanged even when it is already equivalent
    evidence_dir: Path | None = None  # where the worker leaves the held-out outputs (.npy) for the parent to judge


@dataclass
class Attempt:
    kind: str
    accepted: bool
    reason: str
    patch: Patch | None = None
    label_agreement: float | None = None
    violations: int | None = None
    new_flips: list[int] = field(default_factory=list)
    seconds: float = 0.0
    cost: dict[str, Any] | None = None
    applied: bool = False  # part of the written model (accepted attempts can lose to a better one)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "accepted": self.accepted,
            "applied": self.applied,
            "reason": self.reason,
            "patch": self.patch.to_json() if self.patch else None,
            "label_agreement": self.label_agreement,
            "violations": self.violations,
            "new_flips": self.new_flips,
            "seconds": round(self.seconds, 3),
            "cost": self.cost,
        }


@dataclass
class RepairReport:
    source: dict[str, Any]
    target: dict[str, Any]
    output: dict[str, Any] | None
    verdict: str  # one of VERDICTS
    check_before: dict[str, Any]
    attempts: list[Attempt]
    check_after: dict[str, Any] | None
    check_before_held_out: dict[str, Any] | None
    splits: dict[str, int]
    seconds: float
    device: str
    strategy: str
    lenses: dict[str, Any] | None = None
    choice: dict[str, Any] | None = None  # options offered side by side and the one the policy took
    stages: list[dict[str, Any]] = field(default_factory=list)  # which stages ran, and why one did not
    job: dict[str, int] | None = None  # what the job context did: models resolved, loaded, exported
    verdict_reason: str = ""
    samples_needed: int | None = None  # `unproven`: held-out samples that would prove max_flip_rate
    held_out: dict[str, Any] | None = None  # HeldOut counts behind the verdict
    max_flip_rate: float = 0.01
    cost: dict[str, Any] | None = None  # size, latency and precision mix before and after
    evidence: str | None = None  # folder of the held-out arrays the parent judges again
    strata: dict[str, Any] | None = None  # samples failing on the whole data and how they were dealt to the splits

    @property
    def skipped_for_time(self) -> list[str]:
        return [f"{s['stage']}: {s['note']}" for s in self.stages if s.get("note") and "budget" in s["note"]]

    @property
    def succeeded(self) -> bool:
        return self.verdict in SUCCESS

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "source": self.source,
            "target": self.target,
            "output": self.output,
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "samples_needed": self.samples_needed,
            "max_flip_rate": self.max_flip_rate,
            "held_out": self.held_out,
            "cost": self.cost,
            "strategy": self.strategy,
            "check_before": self.check_before,
            "attempts": [a.to_json() for a in self.attempts],
            "check_after": self.check_after,
            "check_before_held_out": self.check_before_held_out,
            "splits": self.splits,
            "strata": self.strata,
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "choice": self.choice,
            "lenses": self.lenses,
            "stages": self.stages,
            "skipped_for_time": self.skipped_for_time,
            "job": self.job,
        }


@dataclass
class Option:
    """A repair that worked on the search split, offered beside the others for the policy to pick."""

    kind: str
    path: Path
    search_check: CheckReport
    attempt: Attempt


def violation_count(report: CheckReport) -> int:
    return sum(o.violations for o in report.pooled.outputs)


def better(before: CheckReport, after: CheckReport) -> tuple[bool, str, list[int]]:
    """Keep a repair only if agreement improves and nothing that agreed now disagrees."""
    new_flips = sorted(set(after.flipped_samples) - set(before.flipped_samples))
    if new_flips:
        return False, f"{len(new_flips)} sample(s) that agreed now disagree", new_flips
    agree_before = before.pooled.label_agreement or 0.0
    agree_after = after.pooled.label_agreement or 0.0
    if agree_after < agree_before:
        return False, "label agreement fell", []
    if agree_after > agree_before or violation_count(after) < violation_count(before) or after.pooled.max_abs < before.pooled.max_abs * 0.5:
        return True, "agreement improved", []
    return False, "no improvement", []


def fewer_flips(before: CheckReport, after: CheckReport, max_break_rate: float | None = None,
                 refusal: str = "no fewer flips") -> tuple[bool, str, list[int]]:
    """For repairs that trade exactness (fallback, patch): fewer flips, and the samples that agreed
    and now disagree within `max_break_rate` of the samples (no bound when None)."""
    new_flips = sorted(set(after.flipped_samples) - set(before.flipped_samples))
    fixed = len(set(before.flipped_samples) - set(after.flipped_samples))
    if len(after.flipped_samples) >= len(before.flipped_samples):
        return False, refusal, new_flips
    if max_break_rate is not None and len(new_flips) > max_break_rate * max(after.distinct, 1):
        return False, f"fixed {fixed}, but broke {len(new_flips)} (more than {max_break_rate:.0%})", new_flips
    return True, f"fixed {fixed} of {len(before.flipped_samples)} flipped sample(s), broke {len(new_flips)}", new_flips


def divergence_moved(before: dict[str, Any], after: dict[str, Any] | None) -> bool:
    """True when the layer localized before now agrees and the first divergence lies later."""
    if not after or not before.get("first_divergent"):
        return False
    layer = before["first_divergent"]["target_layer"]
    rows = {row["target_layer"]: row["status"] for row in after.get("layers", [])}
    order = [row["target_layer"] for row in after.get("layers", [])]
    first_after = (after.get("first_divergent") or {}).get("target_layer")
    return rows.get(layer) == "ok" and (
        first_after is None or (first_after in order and layer in order and order.index(first_after) > order.index(layer))
    )


def fault_type_of(report: CheckReport) -> str | None:
    return ((report.localization or {}).get("fault") or {}).get("type")


def choose_option(options: list[Option], held: dict[str, CheckReport], held_before: CheckReport, target_path: Path, prefer: str) -> dict[str, Any]:
    """Pick one of several working repairs on the selection split (never the held-out one: the
    verdict's evidence must not have chosen anything; the `held_out_*` keys keep their old names). `auto`: an equivalent one first,
    then fewer flips, then the fast one (the patch keeps the quantized model); `fast`: the patch
    whenever it improves on the target; `exact`: the fallback whenever it improves on it."""
    fast = {"pso_patch", "restore"}  # both keep the target's precision
    improves = {kind for kind, report in held.items()
                if len(report.flipped_samples) < len(held_before.flipped_samples)}
    rows = []
    for option in options:
        report = held[option.kind]
        rows.append({"kind": option.kind, "held_out_verdict": report.verdict,
                     "held_out_label_agreement": report.pooled.label_agreement, "held_out_flips": len(report.flipped_samples),
                     "improves": option.kind in improves, "bytes": size_of(option.path),
                     "inference_ms": inference_ms(option.path)})
    ranked = sorted(rows, key=lambda r: (not r["improves"], r["held_out_verdict"] != "equivalent", r["held_out_flips"], r["kind"] not in fast))
    if prefer in ("fast", "exact"):
        wanted = [r for r in ranked if r["improves"] and (r["kind"] in fast) == (prefer == "fast")]
        ranked = wanted + [r for r in ranked if r not in wanted]
    chosen = ranked[0]
    why = {"auto": "equivalent first, then fewer flips on the selection split, then the faster model",
           "fast": "the patch, which keeps the fast model, whenever it improves on the target",
           "exact": "the precision fallback whenever it improves on the target"}[prefer]
    for row in rows:
        row["chosen"] = row is chosen
    return {"policy": prefer, "why": why, "chosen": chosen["kind"], "options": rows, "split": "selection",
            "target": {"bytes": size_of(target_path), "inference_ms": inference_ms(target_path),
                       "held_out_flips": len(held_before.flipped_samples)}}


@dataclass
class SplitView:
    """One model against the source on one split, as counts: which samples fail, and the judge's verdict."""

    failing: set[int]
    discrepant: bool
    n: int


def significant_gain(before: SplitView, after: SplitView) -> tuple[bool, str]:
    """Is `after` better than `before` beyond chance? Equivalent where `before` was discrepant; or
    more samples fixed than broken, with the one-sided 95% Clopper–Pearson upper bound on the
    broken share of the changed samples below one half (a sign test: the same agreement, or a
    gain the size of its own noise, is not kept)."""
    fixed, broken = len(before.failing - after.failing), len(after.failing - before.failing)
    counts = f"fixed {fixed}, broke {broken} of {after.n} samples ({len(before.failing)} → {len(after.failing)} failing)"
    if before.discrepant and not after.discrepant and not after.failing:
        return True, f"equivalent ({counts})"
    if fixed <= broken:
        return False, f"no gain ({counts})"
    bound = clopper_pearson_upper(broken, fixed + broken, CONFIDENCE)
    if bound < 0.5:
        return True, f"{counts}: a gain beyond its bound (one-sided 95% upper bound on the broken share {bound:.0%} < 50%)"
    return False, f"{counts}: within its bound (one-sided 95% upper bound on the broken share {bound:.0%} ≥ 50%)"


def three_splits(total: int, seed: int, failing=None) -> dict[str, np.ndarray]:
    """Disjoint sorted index sets (search, selection, held-out) of `SPLITS`' sizes, from one seeded
    permutation of the data. With `failing` (the samples the target gets wrong on the whole data),
    stratified as scikit-learn's StratifiedShuffleSplit is: the failing samples are dealt to the
    splits on their own, so rare flips are not left to chance (issue 18: 2 flips in 1797, both
    drawn into the held-out split, left the search nothing to fix). From two failing samples on,
    the search and the held-out split each hold at least one; a single one is held out (a repair
    that could only be judged on the sample it was searched on would prove nothing). Which sample
    goes where depends on the seed and on which samples fail, never on any repaired model, and
    the splits stay disjoint: the held-out split is still seen by nothing but the verdict."""
    rng = np.random.default_rng(seed)
    search = int(round(total * SPLITS["search"]))
    selection = int(round(total * SPLITS["selection"]))
    sizes = (search, selection, total - search - selection)  # the same with or without strata
    if failing is None or not len(failing):
        order = rng.permutation(total)
        return {"search": np.sort(order[:search]), "selection": np.sort(order[search:search + selection]),
                "held_out": np.sort(order[search + selection:])}
    bad = np.zeros(total, bool)
    bad[np.asarray(failing, dtype=np.int64)] = True
    failing_sizes = _failing_counts(int(bad.sum()), sizes)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for members, counts in ((np.nonzero(bad)[0], failing_sizes),
                            (np.nonzero(~bad)[0], [whole - part for whole, part in zip(sizes, failing_sizes)])):
        order = rng.permutation(members)
        start = 0
        for name, size in zip(SPLITS, counts):
            parts[name].append(order[start:start + size])
            start += size
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}


def strata_of(whole: CheckReport, splits: dict[str, np.ndarray]) -> dict[str, Any]:
    """Which samples failed on the whole data and where each went; a batch-dependent target
    (dynamic quantization) may not fail on them again when a split is run in other batches."""
    failing = failing_samples(whole)
    return {"failing_whole": failing, "samples": int(whole.distinct),
            "dealt": {name: sorted(int(i) for i in np.intersect1d(idx, failing)) for name, idx in splits.items()},
            "batch_dependent": bool((whole.batch_dependent or {}).get("detected"))}


def _failing_counts(failing: int, sizes: tuple[int, int, int]) -> list[int]:
    """How many failing samples each split gets: `SPLITS`' proportions, at least one in the search
    and one in the held-out split from two on, never more than a split holds."""
    search = min(sizes[0], 0 if failing < 2 else max(1, int(round(failing * SPLITS["search"]))))
    selection = min(sizes[1], int(round(failing * SPLITS["selection"])), max(failing - search - 1, 0))
    held = failing - search - selection
    while held > sizes[2]:  # a split that cannot take more passes the rest on
        if selection < sizes[1]:
            selection += 1
        else:
            search += 1
        held -= 1
    return [search, selection, held]


def flip_rate_bound(failures: int, n: int) -> float:
    """One-sided 95% Clopper–Pearson upper bound on a flip rate after `failures` in `n` distinct samples."""
    return clopper_pearson_upper(failures, n, CONFIDENCE)


def samples_needed(max_flip_rate: float) -> int:
    """Distinct held-out samples that, with no flip among them, put the one-sided 95% upper bound
    at or below `max_flip_rate`: (1 − p)^n ≤ 0.05, so n ≥ ln(0.05) / ln(1 − p)."""
    if max_flip_rate >= 1.0:
        return 1
    if max_flip_rate <= 0.0:
        raise ValueError("max_flip_rate must be above 0: no finite sample proves a flip rate of 0")
    n = math.ceil(math.log(1.0 - CONFIDENCE) / math.log1p(-max_flip_rate))
    while n > 1 and flip_rate_bound(0, n - 1) <= max_flip_rate:  # guard against rounding up one too many
        n -= 1
    return n


@dataclass
class HeldOut:
    """What the held-out split says, as counts: the target and the repaired model against the
    source on the same `n` distinct samples no attempt or choice has seen. A failing sample is a
    label flip (class scores) or a sample outside the judge's tolerance (other outputs)."""

    n: int
    failing_before: list[int]  # held-out samples the target gets wrong
    discrepant_before: bool  # the judge's verdict on the target
    failing_after: list[int] | None = None  # … the repaired model (None: no repair to judge)
    discrepant_after: bool | None = None
    inconclusive: list[str] = field(default_factory=list)  # why the held-out check cannot conclude (the guard)
    label_agreement_before: float | None = None
    label_agreement_after: float | None = None

    @property
    def broken(self) -> list[int]:
        """Samples the target got right that the repair gets wrong."""
        return sorted(set(self.failing_after or []) - set(self.failing_before))

    def bound(self, failing: list[int] | None) -> float | None:
        return flip_rate_bound(len(failing), self.n) if failing is not None and self.n else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["broken"] = self.broken
        out["flip_rate_upper_bound_before"] = self.bound(self.failing_before)
        out["flip_rate_upper_bound_after"] = self.bound(self.failing_after)
        out["bound"] = f"one-sided {CONFIDENCE:.0%} Clopper–Pearson upper bound on the flip rate over {self.n} distinct samples"
        return out


@dataclass
class Verdict:
    verdict: str
    reason: str
    samples_needed: int | None = None  # held-out samples that would prove `max_flip_rate` (for `unproven`)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def final_verdict(held: HeldOut, max_flip_rate: float = 0.01, accept_improvement: bool = False,
                  max_break_rate: float = 0.01) -> Verdict:
    """The verdict from held-out counts alone. `repaired` needs three things: the target failed
    on the held-out split, the repaired model is equivalent there, and the one-sided 95% upper
    bound of its held-out flip rate is at most `max_flip_rate`. Too few samples for the bound:
    `unproven`, naming how many would do. A check that cannot conclude is never `repaired`."""
    needed = samples_needed(max_flip_rate)
    before = len(held.failing_before)
    if held.inconclusive:
        return Verdict("unproven", "the held-out check cannot conclude: " + "; ".join(held.inconclusive))
    if not before and not held.discrepant_before:
        bound = held.bound(held.failing_before)
        return Verdict("already_equivalent", f"no held-out sample fails before repair (0 of {held.n}; one-sided 95% upper "
                                             f"bound on the flip rate {bound:.2%})" if bound is not None else
                       "no held-out sample fails before repair")
    if held.failing_after is None:
        return Verdict("not_repaired", f"no repair to judge; the target fails {before} of {held.n} held-out samples")
    after = len(held.failing_after)
    bound = held.bound(held.failing_after)
    if not held.discrepant_after and not after:
        if bound is not None and bound <= max_flip_rate:
            return Verdict("repaired", f"equivalent on {held.n} held-out samples ({before} failed before); one-sided 95% "
                                       f"upper bound on the flip rate {bound:.2%} ≤ {max_flip_rate:.2%}")
        return Verdict("unproven", f"equivalent on {held.n} held-out samples ({before} failed before), but the one-sided 95% "
                                   f"upper bound on the flip rate is {bound:.2%}, above {max_flip_rate:.2%}: it needs at "
                                   f"least {needed} held-out samples with no flip", needed)
    broken = len(held.broken)
    if after < before and broken <= max_break_rate * max(held.n, 1):
        why = (f"{after} of {held.n} held-out samples fail after repair ({before} before, {broken} newly broken); "
               f"one-sided 95% upper bound on the flip rate {bound:.2%}")
        if accept_improvement:
            return Verdict("improved", why)
        return Verdict("not_repaired", why + "; fewer failures short of equivalence needs --accept-improvement")
    return Verdict("not_repaired", f"{after} of {held.n} held-out samples fail after repair ({before} before, "
                                   f"{broken} newly broken)")


def held_out_of(before: CheckReport, after: CheckReport | None) -> HeldOut:
    """The counts of two held-out checks (the worker's view; the parent recomputes them from arrays)."""
    return HeldOut(n=before.distinct, failing_before=failing_samples(before), discrepant_before=before.discrepant,
                   failing_after=failing_samples(after) if after is not None else None,
                   discrepant_after=after.discrepant if after is not None else None,
                   inconclusive=list(before.inconclusive) + (list(after.inconclusive) if after is not None else []),
                   label_agreement_before=before.pooled.label_agreement,
                   label_agreement_after=after.pooled.label_agreement if after is not None else None)


def failing_samples(report: CheckReport) -> list[int]:
    """Samples a check found wrong: label flips for class scores; otherwise the samples over the
    noise-floor limit, or (tolerances only counting values) every sample when any value is out."""
    if report.pooled.label_agreement is not None:
        return sorted(int(i) for i in report.flipped_samples)
    bad: set[int] = set()
    limits = (report.tolerance.noise_floor or {}).get("outputs") if report.tolerance.noise_floor else None
    for index, out in enumerate(report.pooled.outputs):
        if out.rel_errors is None or out.sample_ids is None:
            continue
        if limits is not None:
            bad |= {int(i) for i in out.sample_ids[out.rel_errors > limits[index]["limit"]]}
        elif out.violations:
            bad |= {int(i) for i in out.sample_ids}  # which samples hold the values is not kept: count them all
    return sorted(bad)


_ORT_INTEGERS = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
                 "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def inference_ms(path: Path, batch: int = 64, repeats: int = 25, length: int = 128) -> float | None:
    """Median time of one batch through ONNX Runtime on the CPU: the cost a fallback adds (None
    for a model in another format: `cost` times every format through its own runner)."""
    if Path(path).suffix != ".onnx":
        return None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():  # a dynamic batch is `batch`, any other dynamic axis `length`
        shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else length) for i, d in enumerate(value.shape)]
        if value.type in _ORT_INTEGERS:  # token ids, masks: ones are valid everywhere (no float noise)
            feeds[value.name] = np.ones(shape, _ORT_INTEGERS[value.type])
        else:
            feeds[value.name] = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float16 if "float16" in value.type else np.float32)
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000)
    return round(float(np.median(times)), 3)
