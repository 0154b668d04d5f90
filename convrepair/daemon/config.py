"""`convrepair.toml`: what to do with one model. Pydantic models with `extra="forbid"` at every
depth, so a misspelt or misplaced key is an error, never silently ignored; every error names
the file, the key path and the problem (`convrepair config validate FILE` prints one a line)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from convrepair.daemon.reads import outside
from convrepair.errors import BadInput

POLICIES = ("auto", "restore", "pso", "none")
PREFERENCES = ("auto", "fast", "exact")  # as convrepair.repair.PREFERENCES (not imported: keeps config light)

NonNegative = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    """No unknown keys, no coercion (`"yes"` is not a boolean, `"1e-3"` is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Tolerances(_Strict):
    atol: Optional[NonNegative] = None
    rtol: Optional[NonNegative] = None


class RepairSection(_Strict):
    policy: Literal["auto", "restore", "pso", "none"] = "auto"
    budget_seconds: NonNegative = 60.0
    accept_improvement: bool = False
    prefer: Literal["auto", "fast", "exact"] = "auto"
    max_flip_rate: Annotated[float, Field(gt=0, lt=1)] = 0.01  # `repaired` needs the held-out flip rate's one-sided 95% bound ≤ this


class ConfigFile(_Strict):
    """The file as written. Paths are relative to the model directory (the file's own)."""

    targets: list[str] = Field(min_length=1)
    data: Optional[str] = None
    calibration: Optional[str] = None
    regression: bool = False
    lenses: Union[str, list[str]] = "all"
    trust_model_code: bool = False  # load code-carrying formats (TorchScript, SavedModel) where no sandbox holds
    tolerances: Tolerances = Tolerances()
    repair: RepairSection = RepairSection()

    @field_validator("lenses")
    @classmethod
    def _known_lenses(cls, value: str | list[str]) -> str | list[str]:
        from convrepair.lenses import parse_lenses

        try:
            parse_lenses(",".join(value) or "none" if isinstance(value, list) else value)
        except BadInput as exc:
            raise ValueError(exc.message) from None
        return value


@dataclass
class ModelConfig:
    """What the daemon uses: the validated file with paths resolved."""

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
    max_flip_rate: float = 0.01
    errors: list[str] = field(default_factory=list)
    trust_model_code: bool = False


class ConfigError(BadInput):
    """Every problem of one config file; `problems` holds them as `key.path: problem`."""

    def __init__(self, problems: list[str], path: Path):
        super().__init__("invalid config: " + "; ".join(problems), path)
        self.problems = problems

    def lines(self) -> list[str]:
        """One line a problem, each naming the file."""
        return [f"{self.path}: {problem}" for problem in self.problems]


def _sections() -> dict[str, type[BaseModel]]:
    return {"": ConfigFile, "tolerances": Tolerances, "repair": RepairSection}


def _where_else(key: str, section: str) -> str:
    """For a key put in the wrong table: where it belongs."""
    for name, model in _sections().items():
        if name != section and key in model.model_fields:
            return f"; `{key}` belongs {'at the top level' if not name else f'under [{name}]'}"
    return ""


def _problem(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(file)"
    kind = error["type"]
    if kind == "extra_forbidden":
        section = ".".join(loc[:-1])
        model = _sections().get(section)
        known = f" (known: {', '.join(model.model_fields)})" if model else ""
        return f"{key}: unknown key{known}{_where_else(loc[-1], section)}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "literal_error":
        return f"{key}: {error['input']!r} is not one of {error['ctx']['expected']}"
    if kind in ("float_type", "greater_than_equal"):
        return f"{key}: must be a non-negative number, got {error['input']!r}"
    if kind == "bool_type":
        return f"{key}: must be true or false, got {error['input']!r}"
    if kind in ("string_type", "list_type"):
        return f"{key}: must be a {'string' if kind == 'string_type' else 'list'}, got {error['input']!r}"
    if kind == "too_short":
        return f"{key}: must not be empty"
    if kind == "value_error":
        return f"{key}: {error['msg'].removeprefix('Value error, ')}"
    return f"{key}: {error['msg']} (got {error['input']!r})"


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise BadInput(f"cannot read config: {exc.strerror or exc}", path) from None
    except UnicodeDecodeError:
        raise BadInput("is not valid TOML: not UTF-8 text", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"is not valid TOML: {exc}", path) from None


def _shape(raw: dict[str, Any]) -> tuple[ConfigFile | None, list[str]]:
    """The file's keys and values against the models: the config, or every problem."""
    try:
        return ConfigFile.model_validate(raw), []
    except ValidationError as exc:
        # a union (lenses) reports once per member; keep one line per key and kind
        return None, _merge_union(list(dict.fromkeys(_problem(e) for e in exc.errors(include_url=False))))


def parse_config(path: Path) -> ConfigFile:
    """Read and validate the file's shape; raises ConfigError listing every problem."""
    config, problems = _shape(_read(Path(path)))
    if config is None:
        raise ConfigError(problems, Path(path))
    return config


def _merge_union(problems: list[str]) -> list[str]:
    """`lenses.str: …` and `lenses.list[str]: …` say one thing: lenses is neither a string nor a list."""
    merged, seen = [], set()
    for problem in problems:
        key = problem.split(":", 1)[0]
        if key.startswith("lenses.") and not key[len("lenses."):].isdigit():
            if "lenses" not in seen:
                merged.append('lenses: must be "all", "none" or a list of lens names')
                seen.add("lenses")
            continue
        merged.append(problem)
    return merged


def load_model_config(path: Path, known_targets: list[str], check_files: bool = True,
                      allowed: tuple[Path, ...] | list[Path] = ()) -> ModelConfig:
    """Parse and validate, resolve the paths against the model directory and check the targets
    and files exist; raises ConfigError (a BadInput) listing every problem as `key: problem`.
    Every file it names must resolve (symlinks followed) inside the model directory or an
    `allowed` folder: the worker is granted what the config names (convrepair.daemon.reads).
    `check_files=False`: data and calibration are not looked for (a remote registry's config names
    artifacts that its job downloads first)."""
    path = Path(path)
    raw = _read(path)
    config, problems = _shape(raw)
    targets = raw.get("targets")
    if isinstance(targets, list):
        problems += [f"targets: unknown target {t!r} (known: {', '.join(known_targets)})"
                     for t in targets if isinstance(t, str) and t not in known_targets]

    def resolve(key: str) -> Path | None:
        value = raw.get(key)
        if not isinstance(value, str):
            return None
        resolved = (path.parent / value).resolve()
        if check_files and outside(path.parent / value, path.parent, allowed):
            problems.append(f"{key}: {value} resolves to {resolved}, outside the model's folder {path.parent} "
                            "(a job's models read only what lies there, or in a folder given with --allow-read)")
        elif check_files and not resolved.is_file():
            problems.append(f"{key}: {value} does not exist (relative to {path.parent})")
        return resolved

    data, calibration = resolve("data"), resolve("calibration")
    if problems or config is None:
        raise ConfigError(problems, path)
    from convrepair.lenses import parse_lenses

    lenses = parse_lenses(",".join(config.lenses) or "none" if isinstance(config.lenses, list) else config.lenses)
    return ModelConfig(path, list(config.targets), data, calibration, config.tolerances.atol, config.tolerances.rtol,
                       config.repair.policy, config.repair.budget_seconds, config.regression, config.repair.accept_improvement,
                       lenses, config.repair.prefer, trust_model_code=config.trust_model_code,
                       max_flip_rate=config.repair.max_flip_rate)
