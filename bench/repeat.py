"""Repeated, shuffled measurement: a bench that does not flatter (issues 18 and 21).

One contender measured once, in a fixed order, baseline first, says more about the machine's
mood than about the contender. Every contender here (the baseline among them) runs `repeats`
times in one seeded shuffled order; what is reported is the median and min–max of each, and
ratios of medians to the baseline's median, all from the same run.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass


def schedule(contenders: list[str], repeats: int, seed: int | str) -> list[str]:
    """Each contender `repeats` times, shuffled by a seeded generator (the order is reproducible)."""
    order = [name for name in contenders for _ in range(repeats)]
    random.Random(seed).shuffle(order)
    return order


@dataclass(frozen=True)
class Spread:
    """Median and min–max of one contender's successful runs."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        if not values:
            return None
        return cls(round(statistics.median(values), 2), round(min(values), 2), round(max(values), 2), len(values))

    def text(self) -> str:
        return f"{self.median:g} ({self.low:g}–{self.high:g})"


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None
