"""`convrepair.toml`: what to do with one model. Every error names the file and the key."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from convrepair.errors import BadInput

POLICIES = ("auto", "restore", "pso", "none")
PREFERENCES = ("auto", "fast", "exact")  # as convrepair.repair.PREFERENCES (not imported: keeps config light)


@dataclass
class ModelConfig:
    path: Path
    targets: list[str]
    data: Path | None = None
    calibration: Path | None = None
    atol: float | None = None
    rtol: float | None = None
    policy: str = "auto"
    budget_seconds: float = 60.0
    regression: bool = False
    accept_improvement: bool = False
    lenses: tuple[str, ...] = ()
    prefer: str = "auto"
    errors: list[str] = field(default_factory=list)


def load_model_config(path: Path, known_targets: list[str]) -> ModelConfig:
    """Parse and validate; raises BadInput listing every problem as `key: problem`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"is not valid TOML: {exc}", path) from None
    errors: list[str] = []
    targets = raw.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        errors.append("targets: must be a non-empty list of target names")
        targets = []
    for target in targets:
        if target not in known_targets:
            errors.append(f"targets: unknown target {target!r} (known: {', '.join(known_targets)})")

    def file_key(key: str) -> Path | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            errors.append(f"{key}: must be a path (string)")
            return None
        resolved = (path.parent / value).resolve()
        if not resolved.is_file():
            errors.append(f"{key}: {value} does not exist")
        return resolved

    data, calibration = file_key("data"), file_key("calibration")
    tolerances, repair = raw.get("tolerances", {}), raw.get("repair", {})
    for table, name in ((tolerances, "tolerances"), (repair, "repair")):
        if not isinstance(table, dict):
            errors.append(f"{name}: must be a table")
    atol = _number(tolerances, "atol", "tolerances", errors)
    rtol = _number(tolerances, "rtol", "tolerances", errors)
    policy = repair.get("policy", "auto") if isinstance(repair, dict) else "auto"
    if policy not in POLICIES:
        errors.append(f"repair.policy: {policy!r} is not one of {', '.join(POLICIES)}")
    budget = _number(repair, "budget_seconds", "repair", errors)
    prefer = repair.get("prefer", "auto") if isinstance(repair, dict) else "auto"
    if prefer not in PREFERENCES:
        errors.append(f"repair.prefer: {prefer!r} is not one of {', '.join(PREFERENCES)}")
    lenses = _lenses(raw.get("lenses", "all"), errors)
    known = {"targets", "data", "calibration", "tolerances", "repair", "regression", "lenses"}
    errors += [f"{key}: unknown key" for key in raw if key not in known]
    if errors:
        raise BadInput("invalid config: " + "; ".join(errors), path)
    return ModelConfig(path, targets, data, calibration, atol, rtol, policy, budget if budget is not None else 60.0,
                       bool(raw.get("regression", False)), bool(repair.get("accept_improvement", False)), lenses, prefer)


def _lenses(value, errors: list[str]) -> tuple[str, ...]:
    """`lenses = "all"` (the default), `"none"`, or a list of lens names."""
    from convrepair.lenses import parse_lenses

    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value) or "none"
    if not isinstance(value, str):
        errors.append("lenses: must be \"all\", \"none\" or a list of lens names")
        return ()
    try:
        return parse_lenses(value)
    except BadInput as exc:
        errors.append(f"lenses: {exc.message}")
        return ()


def _number(table, key: str, prefix: str, errors: list[str]) -> float | None:
    if not isinstance(table, dict) or key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        errors.append(f"{prefix}.{key}: must be a non-negative number")
        return None
    return float(value)
