"""The check split at the process boundary: the contained worker runs models, the parent judges.

Chromium's renderer/broker split (docs/ARCHITECTURE.md, Trust): the parent decides what is asked
(`ask`: the data's size and labels read from the file itself, the sampling plan, the models'
digests), the worker runs the models on exactly those samples and hands back tensors (`work`,
`evidence.write`), and the parent reads, checks and hashes them and computes the verdict with the
one judge (`decide`). Diagnostics that stay in the worker for speed (localization, lenses) are
copied into the report marked `worker` in its `provenance`; they never change the verdict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair import evidence as tensors
from convrepair.errors import BadInput
from convrepair.judge import DataFacts, needs_floor, value_range

if TYPE_CHECKING:
    from convrepair.check import CheckConfig, CheckReport
    from convrepair.model import ModelRef
    from convrepair.plugins import PluginRegistry
    from convrepair.sidecar import Sidecar


@dataclass
class Asked:
    """What the parent asks the worker for, and what it knows without it."""

    source: tuple[ModelRef, Sidecar | None]
    target: tuple[ModelRef, Sidecar | None]
    data: DataFacts
    plan: list[tuple[int, np.ndarray]]
    indices: np.ndarray
    floor: bool


def ask(registry: PluginRegistry, source: Path, target: Path, config: CheckConfig) -> Asked:
    """The parent's side, before the worker runs: hash the models, read the data file, draw the plan."""
    from convrepair.check import sampling_plan, validate_config
    from convrepair.data import npz_facts
    from convrepair.model import model_ref
    from convrepair.sidecar import noise_origin, read_sidecar, recorded_range

    validate_config(config)
    refs = [model_ref(path, registry) for path in (source, target)]
    # a file without a sidecar may say its own precision (a quantized .tflite: parsed, not loaded)
    sidecars = [read_sidecar(ref.path) or registry.implied_sidecar(ref) for ref in refs]
    if config.data is not None:
        count, labels, arrays = npz_facts(config.data)
        data = DataFacts(count, labels, str(config.data), True, tuple(value_range(x) for x in arrays))
    else:
        data = DataFacts(config.rounds * config.samples, None, noise_origin(recorded_range(sidecars[0])), False)
    plan = sampling_plan(data.n, config.rounds, config.samples, config.seed)
    precision = sidecars[1].precision if sidecars[1] else "fp32"
    return Asked((refs[0], sidecars[0]), (refs[1], sidecars[1]), data, plan, tensors.distinct(plan),
                 needs_floor(config, precision))


def work(registry: PluginRegistry, source: Path, target: Path, config: CheckConfig, asked_n: int, indices: np.ndarray,
         folder: Path) -> dict[str, Any]:
    """The worker's side: run both models on `indices`, write the tensors to `folder`, and return
    the diagnostics (its own report, judged here only to decide whether to localize)."""
    from convrepair.check import diagnose, job_dataset, judge_evidence, sampling_plan
    from convrepair.job import JobContext

    with JobContext(registry) as job:
        s, t = job.model(source), job.model(target)
        dataset = job_dataset(job, s, config)
        if len(dataset) != asked_n:
            raise BadInput(f"the data holds {len(dataset)} samples for the model, {asked_n} in the file", config.data)
        plan = sampling_plan(len(dataset), config.rounds, config.samples, config.seed)
        found = tensors.gather(job, s, t, dataset, indices, config.batch_size, needs_floor(config, t.precision))
        facts = tensors.write(found, folder)
        report = judge_evidence(found, plan, DataFacts.of(dataset, config.data is not None), config,
                                (s.ref, s.sidecar), (t.ref, t.sidecar))
        diagnose(job, s, t, dataset, plan, config, report)
        return {"facts": facts, "report": report.to_json()}


def decide(asked: Asked, folder: Path, reply: dict[str, Any], config: CheckConfig, started: float) -> CheckReport:
    """The parent's side, after: the verdict from the tensors alone; the worker's diagnostics beside it."""
    from convrepair.check import judge_evidence

    found = tensors.read(folder, asked.indices, asked.floor)
    report = judge_evidence(found, asked.plan, asked.data, config, asked.source, asked.target)
    report.seconds = time.perf_counter() - started
    mine = report.to_json()
    worker = reply.get("report") if isinstance(reply, dict) else None
    reported = {key: value for key, value in (worker or {}).items()
                if key in DIAGNOSTICS or (key not in mine and value is not None)}
    report.worker_reported = reported
    report.provenance = {"parent": sorted(k for k in mine if k not in reported and k != "provenance"),
                         "worker": sorted(reported)}
    return report


DIAGNOSTICS = ("localization", "lenses")  # computed in the worker, reported as such
