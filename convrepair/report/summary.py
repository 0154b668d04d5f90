"""What the terminal and the HTML page both show: one row per model of the lens results, and
whether an attempt made it into the written model."""

from __future__ import annotations

from typing import Any


def summary_rows(lenses: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model: accuracy, ECE, T, ECE after T, mean confidence, entropy, KS p-value against the
    reference, samples crossing τ, and accuracy under the strongest PGD attack."""
    calibration = available(lenses, "calibration") or {}
    uncertainty = available(lenses, "uncertainty") or {}
    robustness = available(lenses, "robustness") or {}
    strongest = max((p for p in robustness.get("points", []) if p["attack"] == "pgd"), key=lambda p: p["epsilon"], default=None)
    rows = []
    for role in roles(lenses):
        cal = calibration.get(role) or {}
        dist = (uncertainty.get("models") or {}).get(role) or {}
        shift = (uncertainty.get("shift") or {}).get(role) or {}
        rows.append({
            "model": role,
            "accuracy": cal.get("accuracy"),
            "ece": cal.get("ece"),
            "temperature": cal.get("temperature"),
            "ece_before": cal.get("ece_before", cal.get("ece")),
            "ece_after": cal.get("ece_after"),
            "mean_confidence": dist.get("mean_confidence"),
            "mean_entropy": dist.get("mean_entropy"),
            "confidence_shift_p": shift.get("confidence_p"),
            "crossed_tau": len(shift["crossed_tau"]) if "crossed_tau" in shift else None,
            "pgd_epsilon": strongest["epsilon"] if strongest else None,
            "pgd_accuracy": strongest["accuracy"].get(role) if strongest else None,
        })
    return rows


def available(lenses: dict[str, Any], name: str) -> dict[str, Any] | None:
    result = lenses.get(name)
    return None if not isinstance(result, dict) or "unavailable" in result else result


def unavailable(lenses: dict[str, Any]) -> dict[str, str]:
    return {name: value["unavailable"] for name, value in lenses.items() if isinstance(value, dict) and "unavailable" in value}


def roles(lenses: dict[str, Any]) -> list[str]:
    """The models in the order they were given (a signed log's canonical JSON sorts the dicts)."""
    return list(lenses.get("roles") or lenses.get("models", {}))


def kept(attempt: dict[str, Any]) -> str:
    """Whether an attempt is in the written model: accepted attempts can lose to a better one."""
    applied = attempt.get("applied", attempt["accepted"])  # logs before `applied` existed
    return "yes" if applied else ("passed, not used" if attempt["accepted"] else "no")
