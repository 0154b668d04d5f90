"""Reliability lenses for the reviewer: calibration, uncertainty, robustness and occlusion.

Label agreement says whether a converted model agrees with its source; the lenses say how far
each model's inferences can be trusted. They run on the same seeded samples as the check,
batched, on already-open runners (CUDA when a runner chose it), one lens module per lens, each
returning a dataclass. A lens that cannot run on these models or this data reports why and the
others go on: a lens never fails the job.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convrepair.data import Dataset
from convrepair.errors import BadInput, ConvrepairError, exception_text
from convrepair.lenses import calibration, occlusion, robustness, uncertainty
from convrepair.sidecar import recorded_range
from convrepair.lenses.scores import LensUnavailable, as_log_probabilities, predict_scores
from convrepair.model import Differentiable, Runner
from convrepair.events import track

#: name → `run(ctx)`; the order is the order of the report.
LENSES: dict[str, Callable[[LensContext], Any]] = {
    "calibration": calibration.run,
    "uncertainty": uncertainty.run,
    "robustness": robustness.run,
    "occlusion": occlusion.run,
}


@dataclass
class LensConfig:
    names: tuple[str, ...] = tuple(LENSES)
    bins: int = 15  # calibration: equal-width confidence bins
    tau: float = 0.5  # uncertainty: out-of-distribution threshold on the max softmax
    epsilons: tuple[float, ...] = (0.02, 0.05, 0.1)  # robustness: L∞ ε as a share of the input range
    pgd_steps: int = 10
    pgd_step: float | None = None  # PGD step as a multiple of ε (default 2.5 / pgd_steps, Madry et al.)
    robustness_samples: int = 256
    patch: int | None = None  # occlusion: default 2×2 on small inputs, a 14×14 grid on larger
    stride: int | None = None
    occlusion_samples: int = 8  # samples whose label changed
    occlusion_unchanged: int = 2  # and a few that did not
    max_samples: int = 1000
    seed: int = 0


def lens_config(names: str | None, seed: int = 0, epsilons: str | None = None, pgd_steps: int | None = None,
                pgd_step: float | None = None) -> LensConfig | None:
    """A `LensConfig` from command-line text (`--lenses`, `--epsilons 0.02,0.05`…); None for no lenses."""
    chosen = parse_lenses(names)
    if not chosen:
        return None
    config = LensConfig(names=chosen, seed=seed)
    if epsilons is not None:
        try:
            config.epsilons = tuple(float(e) for e in epsilons.split(",") if e.strip())
        except ValueError:
            raise BadInput(f"--epsilons takes comma-separated numbers, not '{epsilons}'") from None
        if not config.epsilons or not all(0 < e <= 1 for e in config.epsilons):
            raise BadInput("--epsilons are shares of the input range, each in (0, 1]")
    if pgd_steps is not None:
        if pgd_steps < 1:
            raise BadInput("--pgd-steps must be at least 1")
        config.pgd_steps = pgd_steps
    if pgd_step is not None:
        if pgd_step <= 0:
            raise BadInput("--pgd-step must be positive (a multiple of ε)")
        config.pgd_step = pgd_step
    return config


def parse_lenses(text: str | None) -> tuple[str, ...]:
    """`--lenses`: a comma list of lens names, `all`, or `none`."""
    if text is None or text.strip() in ("", "none"):
        return ()
    if text.strip() == "all":
        return tuple(LENSES)
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in LENSES]
    if unknown:
        raise BadInput(f"unknown lens {', '.join(unknown)} (known: {', '.join(LENSES)}, all, none)")
    return names


@dataclass
class LensModel:
    """One model the lenses look through: its role in the report and an open runner."""

    role: str  # "source", "target", "repaired", or a version name
    runner: Runner
    path: str = ""
    format: str = ""


@dataclass
class LensContext:
    """What every lens gets: models, data and the class log-probabilities computed once."""

    roles: list[str]
    runners: dict[str, Runner]
    dataset: Dataset
    eval_idx: np.ndarray
    eval_scores: dict[str, np.ndarray]  # log-probabilities, (len(eval_idx), classes)
    labels: np.ndarray | None
    fit_scores: dict[str, np.ndarray] | None  # the repair split, for temperature scaling; None: split eval
    fit_labels: np.ndarray | None
    classes: int
    input_range: tuple[float, float]
    config: LensConfig
    gradients: Callable[[], Differentiable] | None


@dataclass
class LensReport:
    models: dict[str, dict[str, str]]
    samples: int
    data: str
    seconds: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"roles": list(self.models), "models": self.models, "samples": self.samples, "data": self.data,
                               "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
        for name, result in self.results.items():
            out[name] = _plain(result)
        for name, reason in self.unavailable.items():
            out[name] = {"unavailable": reason}
        return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def input_range_of(sidecar, dataset: Dataset) -> tuple[float, float]:
    """The valid input range: as the sidecar records it (measured at conversion), else the data's own."""
    recorded = recorded_range(sidecar)
    if recorded is not None:
        return recorded
    x = dataset.inputs[0]
    return float(np.min(x)), float(np.max(x))


def run_lenses(models: list[LensModel], dataset: Dataset, eval_idx: np.ndarray, config: LensConfig,
               fit_idx: np.ndarray | None = None, gradients: Callable[[], Differentiable] | None = None,
               input_range: tuple[float, float] | None = None) -> LensReport:
    """Every lens in `config.names` over `models` (the first is the reference, usually the source).

    `eval_idx` are the samples the lenses judge on; temperature scaling is fitted on `fit_idx`
    (the repair split) or, without it, on a seeded half of `eval_idx` and judged on the other half.
    """
    rng = np.random.default_rng(config.seed)
    eval_idx = np.asarray(eval_idx)
    if len(eval_idx) > config.max_samples:
        eval_idx = np.sort(rng.choice(eval_idx, config.max_samples, replace=False))
    if fit_idx is not None and not len(fit_idx):
        fit_idx = None
    if fit_idx is not None and len(fit_idx) > config.max_samples:
        fit_idx = np.sort(rng.choice(fit_idx, config.max_samples, replace=False))
    report = LensReport({m.role: {"path": m.path, "format": m.format} for m in models}, int(len(eval_idx)), dataset.origin)
    try:
        if len(dataset.inputs) != 1:
            raise LensUnavailable(f"the lenses take models with one input; these have {len(dataset.inputs)}")
        started = time.perf_counter()
        eval_scores = {m.role: as_log_probabilities(predict_scores(m.runner, dataset.take(eval_idx))) for m in models}
        fit_scores = {m.role: as_log_probabilities(predict_scores(m.runner, dataset.take(fit_idx))) for m in models} \
            if fit_idx is not None and "calibration" in config.names else None
        report.seconds["predictions"] = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - without predictions no lens runs; each says why, the job goes on
        if isinstance(exc, ConvrepairError):
            reason = exc.one_line()
        elif isinstance(exc, LensUnavailable):
            reason = str(exc)
        else:
            reason = f"failed: {type(exc).__name__}: {exception_text(exc, 200)}"
        report.unavailable = {name: reason for name in config.names}
        return report
    labels = dataset.labels
    ctx = LensContext(
        roles=[m.role for m in models], runners={m.role: m.runner for m in models}, dataset=dataset,
        eval_idx=eval_idx, eval_scores=eval_scores, labels=labels[eval_idx].astype(np.int64) if labels is not None else None,
        fit_scores=fit_scores, fit_labels=labels[fit_idx].astype(np.int64) if labels is not None and fit_idx is not None else None,
        classes=next(iter(eval_scores.values())).shape[1], input_range=input_range or input_range_of(None, dataset),
        config=config, gradients=gradients,
    )
    for name in track(config.names, f"lenses ({', '.join(config.names)})"):
        started = time.perf_counter()
        try:
            report.results[name] = LENSES[name](ctx)
        except LensUnavailable as exc:
            report.unavailable[name] = str(exc)
        except ConvrepairError as exc:
            report.unavailable[name] = exc.one_line()
        except Exception as exc:  # noqa: BLE001 - a lens says why it failed; it never fails the job
            report.unavailable[name] = f"failed: {type(exc).__name__}: {exception_text(exc, 200)}"
        report.seconds[name] = time.perf_counter() - started
    return report


def run_lenses_on_files(registry, files: list[tuple[str, Any]], dataset: Dataset, eval_idx: np.ndarray,
                        config: LensConfig, fit_idx: np.ndarray | None = None, job=None) -> LensReport:
    """`run_lenses` over models on disk: `files` are (role, path), the first being the reference
    whose gradients craft the adversarial inputs and whose sidecar gives the valid input range.
    With a `JobContext`, the job's models (already resolved and loaded) are used and left open."""
    import contextlib

    from convrepair.job import opened

    try:
        with contextlib.ExitStack() as stack:
            ctx = stack.enter_context(opened(job, registry))
            handles = [(role, ctx.model(path)) for role, path in files]
            sidecars = {role: handle.sidecar for role, handle in handles}
            first_role, first_ref = handles[0][0], handles[0][1].ref
            models = [LensModel(role, ctx.runner(handle), str(handle.ref.path), handle.ref.format)
                      for role, handle in handles]
            return run_lenses(models, dataset, eval_idx, config, fit_idx,
                              gradients=lambda: registry.load_differentiable(first_ref, sidecars[first_role]),
                              input_range=input_range_of(sidecars[first_role], dataset))
    except Exception as exc:  # noqa: BLE001 - a model the lenses cannot load is reported; the job goes on
        reason = exc.one_line() if isinstance(exc, ConvrepairError) else f"failed: {type(exc).__name__}: {exception_text(exc, 200)}"
        report = LensReport({role: {"path": str(path), "format": ""} for role, path in files}, int(len(eval_idx)), dataset.origin)
        report.unavailable = {name: f"cannot load the models: {reason}" for name in config.names}
        return report
