"""What a repair is made of and how its attempts are judged: the config, each attempt, the
report, and the rules that keep a change (more agreement, nothing broken) and name the verdict."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.check import CheckReport
from convrepair.repair.restore import Patch

if TYPE_CHECKING:
    from convrepair.lenses import LensConfig

SCHEMA = "convrepair.repair/v1"
STRATEGIES = ("auto", "restore", "pso")
PREFERENCES = ("auto", "fast", "exact")


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
    verdict: str  # "repaired" | "improved" | "already_equivalent" | "not_repaired" | "inconclusive"
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

    @property
    def skipped_for_time(self) -> list[str]:
        return [f"{s['stage']}: {s['note']}" for s in self.stages if s.get("note") and "budget" in s["note"]]

    @property
    def succeeded(self) -> bool:
        return self.verdict in ("repaired", "improved", "already_equivalent")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "source": self.source,
            "target": self.target,
            "output": self.output,
            "verdict": self.verdict,
            "strategy": self.strategy,
            "check_before": self.check_before,
            "attempts": [a.to_json() for a in self.attempts],
            "check_after": self.check_after,
            "check_before_held_out": self.check_before_held_out,
            "splits": self.splits,
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
    """Pick one of several working repairs on the held-out half. `auto`: an equivalent one first,
    then fewer flips, then the fast one (the patch keeps the quantized model); `fast`: the patch
    whenever it improves on the target; `exact`: the fallback whenever it improves on it."""
    fast = {"pso_patch"}
    improves = {kind for kind, report in held.items()
                if len(report.flipped_samples) < len(held_before.flipped_samples)}
    rows = []
    for option in options:
        report = held[option.kind]
        rows.append({"kind": option.kind, "held_out_verdict": report.verdict,
                     "held_out_label_agreement": report.pooled.label_agreement, "held_out_flips": len(report.flipped_samples),
                     "improves": option.kind in improves, "bytes": option.path.stat().st_size,
                     "inference_ms": inference_ms(option.path)})
    ranked = sorted(rows, key=lambda r: (not r["improves"], r["held_out_verdict"] != "equivalent", r["held_out_flips"], r["kind"] not in fast))
    if prefer in ("fast", "exact"):
        wanted = [r for r in ranked if r["improves"] and (r["kind"] in fast) == (prefer == "fast")]
        ranked = wanted + [r for r in ranked if r not in wanted]
    chosen = ranked[0]
    why = {"auto": "equivalent first, then fewer held-out flips, then the faster model",
           "fast": "the patch, which keeps the fast model, whenever it improves on the target",
           "exact": "the precision fallback whenever it improves on the target"}[prefer]
    for row in rows:
        row["chosen"] = row is chosen
    return {"policy": prefer, "why": why, "chosen": chosen["kind"], "options": rows,
            "target": {"bytes": Path(target_path).stat().st_size, "inference_ms": inference_ms(target_path),
                       "held_out_flips": len(held_before.flipped_samples)}}


def final_verdict(held_before: CheckReport, after: CheckReport | None, config: RepairConfig) -> str:
    if after is None:
        return "not_repaired"
    if not after.discrepant:
        return "repaired"
    broken = set(after.flipped_samples) - set(held_before.flipped_samples)
    agree_before, agree_after = held_before.pooled.label_agreement or 0.0, after.pooled.label_agreement or 0.0
    improved = agree_after > agree_before and len(broken) <= config.max_break_rate * max(after.distinct, 1)
    return "improved" if improved and config.accept_improvement else "not_repaired"


def inference_ms(path: Path, batch: int = 256, repeats: int = 25) -> float:
    """Median time of one batch through ONNX Runtime on the CPU: the cost a fallback adds."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        shape = [batch if not isinstance(d, int) or i == 0 else d for i, d in enumerate(value.shape)]
        feeds[value.name] = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float16 if "float16" in value.type else np.float32)
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000)
    return round(float(np.median(times)), 3)
