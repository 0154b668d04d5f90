"""A job on an MLflow version: fetch its artifacts for the local job, then publish what it wrote.

`fetch` downloads the version through the artifact API into a folder of the job's own, in the
directory registry's layout (`m/convrepair.toml`, `m/<version>/model.<ext>`), with the config's
`data`/`calibration` (paths inside the version's artifacts, or artifact URIs) fetched beside it.
`publish` writes the results folder as artifacts of the one run of (model, version, target) in
the experiment `convrepair` (found again after a crash, never a second), then the version's
tags, `convrepair.<target>.verdict` last: the mark `published` and the daemon's scan look for.
"""

from __future__ import annotations

import json
import shutil
import tomllib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convrepair.daemon.registry import Fetched
from convrepair.errors import BadInput
from convrepair.fsutil import sha256_file
from convrepair_plugins.mlflow.client import RegistryError
from convrepair_plugins.mlflow.registry import EXPERIMENT, LOG, REPORT, TAG_CONFIG, TAG_CONFIG_ARTIFACT, URI_PREFIXES, folder_name
from convrepair_plugins.mlflow.toml import dumps as toml_dumps

if TYPE_CHECKING:
    from convrepair_plugins.mlflow.registry import MlflowRegistry


def published(registry: MlflowRegistry, model: str, version: str, target: str) -> dict[str, Any] | None:
    mv = registry.server.call(f"reading models:/{model}/{version}", lambda: registry.client.get_model_version(model, version))
    tags = mv.tags or {}
    if f"convrepair.{target}.verdict" not in tags:
        return None
    return _result(tags.get(f"convrepair.{target}.run_id", ""), target, tags.get(f"convrepair.{target}.verdict"),
                   tags.get("convrepair.label_agreement"), tags.get(f"convrepair.{target}.log_sha256"), "already published")


def fetch(registry: MlflowRegistry, model: str, version: str, target: str, downloads: Path) -> Fetched:
    """The version's artifacts and sample data, downloaded once per job into `downloads`."""
    where = f"models:/{model}/{version}"
    mv = registry.server.call(f"reading {where}", lambda: registry.client.get_model_version(model, version))
    if mv.status != "READY":
        raise RegistryError(f"mlflow {registry.uri}: {where} is {mv.status}, not READY")
    tags = registry.server.call(f"reading registered model {model}", lambda: registry.client.get_registered_model(model)).tags or {}
    text = registry.config_text(model, tags)
    if text is None:
        raise BadInput(f"{where}: no {TAG_CONFIG} or {TAG_CONFIG_ARTIFACT} tag on the registered model")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{where} (tag {TAG_CONFIG}): is not valid TOML: {exc}") from None
    job_dir = Path(downloads) / folder_name(model) / folder_name(version) / folder_name(target)
    model_dir = job_dir / "m"
    version_dir = model_dir / folder_name(version)
    if not model_dir.exists():  # a finished download from an earlier attempt is reused
        tmp = job_dir / f".tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            _download(registry, mv, where, raw, tmp, tmp / version_dir.name)
            tmp.rename(model_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Fetched(version_dir, _model_file(version_dir, where))


def _download(registry: MlflowRegistry, mv, where: str, raw: dict[str, Any], model_dir: Path, version_dir: Path) -> None:
    source = registry.server.call(f"resolving {where}", lambda: registry.client.get_model_version_download_uri(mv.name, mv.version))
    got = Path(registry.server.download(source, str(model_dir / ".download"), f"downloading {source} ({where})"))
    if got.is_dir():
        got.rename(version_dir)
    else:
        version_dir.mkdir()
        got.rename(version_dir / got.name)
    for key in ("data", "calibration"):
        value = raw.get(key)
        if not isinstance(value, str):
            continue
        if value.startswith(URI_PREFIXES):
            into = model_dir / ".inputs" / key
            into.mkdir(parents=True)
            path = Path(registry.server.download(value, str(into), f"downloading {key} {value} ({where})"))
            raw[key] = str(path.relative_to(model_dir))
        else:
            inside = (version_dir / value).resolve()
            if not inside.is_relative_to(version_dir.resolve()) or not inside.is_file():
                raise BadInput(f"{where}: {key} = {value!r} is not a file among the version's artifacts")
            raw[key] = f"{version_dir.name}/{value}"
    (model_dir / "convrepair.toml").write_text(toml_dumps(raw))


def publish(registry: MlflowRegistry, model: str, version: str, target: str, results: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Results as artifacts of the (model, version, target) run, then the version's tags."""
    where = f"models:/{model}/{version}"
    report = json.loads((results / REPORT).read_text())
    verdict = str(report.get("verdict"))
    agreement = (report.get("check_before") or {}).get("label_agreement")
    log_sha256 = sha256_file(results / LOG) if (results / LOG).exists() else None
    run_id = _run_for(registry, model, version, target)
    client = registry.client
    registry.server.call(f"uploading results of {where} to run {run_id}",
                     lambda: client.log_artifacts(run_id, str(results), artifact_path=target))
    run_tags = {"convrepair.verdict": verdict, "convrepair.log_sha256": log_sha256 or "unsigned"}
    for key, value in run_tags.items():
        registry.server.call(f"tagging run {run_id}", lambda k=key, v=value: client.set_tag(run_id, k, v))
    if isinstance(agreement, (int, float)):
        registry.server.call(f"logging metrics of run {run_id}", lambda: client.log_metric(run_id, "label_agreement", float(agreement)))
    registry.server.call(f"closing run {run_id}", lambda: client.set_terminated(run_id, "FINISHED"))
    tags = {"convrepair.run_id": run_id, "convrepair.target": target, "convrepair.verdict": verdict,
            "convrepair.label_agreement": "" if agreement is None else str(agreement),
            "convrepair.log_sha256": log_sha256 or "unsigned", "convrepair.status": "pending-review",
            f"convrepair.{target}.run_id": run_id, f"convrepair.{target}.log_sha256": log_sha256 or "unsigned",
            f"convrepair.{target}.verdict": verdict}  # last: the mark that this job is finished
    for key, value in tags.items():
        registry.server.call(f"tagging {where}", lambda k=key, v=value: client.set_model_version_tag(model, version, k, v))
    job_dir = Path(results).parents[3]  # <downloads>/<model>/<version>/<target>: this job's alone
    shutil.rmtree(job_dir, ignore_errors=True)
    return _result(run_id, target, verdict, agreement, log_sha256, None)


def _run_for(registry: MlflowRegistry, model: str, version: str, target: str) -> str:
    """The one run of this (model, version, target), created on the first attempt only."""
    client = registry.client
    experiment = registry.server.call("reading experiment convrepair", lambda: client.get_experiment_by_name(EXPERIMENT))
    if experiment is None:
        try:
            experiment_id = registry.server.call("creating experiment convrepair", lambda: client.create_experiment(EXPERIMENT))
        except RegistryError:  # created meanwhile by another job
            experiment_id = registry.server.call("reading experiment convrepair", lambda: client.get_experiment_by_name(EXPERIMENT)).experiment_id
    else:
        experiment_id = experiment.experiment_id
    keys = {"convrepair.model": model, "convrepair.version": version, "convrepair.for_target": target}
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in keys.items())
    runs = registry.server.call("searching runs", lambda: client.search_runs([experiment_id], where, max_results=1))
    if runs:
        return runs[0].info.run_id
    run = registry.server.call("creating a run", lambda: client.create_run(experiment_id, tags=keys,
                                                                     run_name=f"convrepair {model} v{version} {target}"))
    run_id = run.info.run_id
    registry.server.call(f"tagging models:/{model}/{version}",
                     lambda: client.set_model_version_tag(model, version, f"convrepair.{target}.run_id", run_id))
    return run_id


def _result(run_id: str, target: str, verdict, agreement, log_sha256, note) -> dict[str, Any]:
    result = {"status": "done", "results": f"runs:/{run_id}/{target}", "run_id": run_id, "verdict": verdict,
              "label_agreement": agreement, "log_sha256": log_sha256}
    return {**result, "note": note} if note else result


def _model_file(version_dir: Path, where: str) -> Path:
    candidates = sorted(p for p in version_dir.iterdir() if p.name.startswith("model.") and not p.name.endswith(".convrepair.json"))
    if not candidates:
        files = sorted(p for p in version_dir.iterdir() if not p.name.endswith(".convrepair.json"))
        if len(files) == 1:
            return files[0]
        raise BadInput(f"{where}: no model.<ext> among its artifacts ({', '.join(p.name for p in files[:8]) or 'none'})")
    return candidates[0]
