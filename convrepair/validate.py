"""`convert --data`: a converted model judged against its source on sample data, by check itself.

It sits above both `convert` (which makes the model) and `check` (which judges it): conversion
alone never runs a check, so the engine's conversion module stays below the check and the
localization that exports through it (no import circle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convrepair.check import CheckConfig, run_check

if TYPE_CHECKING:
    from convrepair.convert import ConversionResult
    from convrepair.plugins import PluginRegistry


@dataclass
class Validation:
    """How a converted model compares with its source on sample data: check's verdict, by check's
    judge, on every sample (what `check --rounds 1 --samples N` reports on the same data)."""

    data: str
    n: int
    label_agreement: float | None
    max_abs: float
    flips: int
    source_accuracy: float | None
    target_accuracy: float | None
    inconclusive: list[str] = field(default_factory=list)  # the guard's reasons (judge.guard)
    guard_notes: list[str] = field(default_factory=list)  # what the guard could not check (judge.guard_notes)
    verdict: str = "equivalent"  # judge.verdict: equivalent | discrepant | inconclusive
    reasons: list[str] = field(default_factory=list)  # why discrepant (judge.judge)
    classifier: bool = True
    batch_dependent: dict[str, Any] = field(default_factory=dict)
    tolerance: str = ""  # what the outputs were held to

    @property
    def agrees(self) -> bool:
        return self.verdict == "equivalent"

    def to_json(self) -> dict[str, Any]:
        return self.__dict__ | {"agrees": self.agrees}


def validate(registry: PluginRegistry, result: ConversionResult, data: Path, batch_size: int | None = None) -> Validation:
    """Judge the output against its source on every sample of `data`, through check itself: one
    judge decides what each output is (class scores, embedding, regression), its tolerance and the
    verdict; there is no second comparison here."""
    config = CheckConfig(data=Path(data), rounds=1, samples=2**31 - 1, localize=False)
    config.batch_size = batch_size or config.batch_size  # check's own batches: batch-dependent targets answer alike
    report = run_check(registry, result.source.path, result.output.path, config)
    pooled, n = report.pooled, report.pooled.n
    return Validation(
        data=str(data),
        n=n,
        label_agreement=pooled.label_agreement,
        max_abs=pooled.max_abs,
        flips=len(pooled.flips),
        source_accuracy=pooled.source_correct / n if pooled.source_correct is not None else None,
        target_accuracy=pooled.target_correct / n if pooled.target_correct is not None else None,
        inconclusive=report.inconclusive,
        guard_notes=report.guard_notes,
        verdict=report.verdict,
        reasons=report.reasons,
        classifier=report.classifier,
        batch_dependent=report.batch_dependent,
        tolerance=report.tolerance.origin,
    )
