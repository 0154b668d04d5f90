"""show / approve / reject / review / verify on MLflow-backed logs (`models:/NAME/VERSION[/TARGET]`,
`models:/NAME@ALIAS[/TARGET]`, `runs:/RUN_ID/TARGET`; `models:/NAME` for review), through the same
ledger code as local logs. A version the daemon processed for several targets holds one log per
target: the URI (or `--target`) names one, and a URI that could mean several is refused, never
picked silently. Decisions are tagged per target (`convrepair.<target>.decision`, …).

The ledger works on a folder; MLflow holds its pieces. Each command rebuilds that folder in a
temporary directory — the reviewer's trust file at its root, the registry's transparency log
(artifacts of the run `convrepair transparency log` in the experiment `convrepair`), and the
job's results at `<model>/<version>/convrepair/<target>/`, as the daemon lays them out — runs
`convrepair.ledger`, and writes back what changed: the transparency log, tags on the version.

`approve --promote` then builds the promoted version (`convrepair.ledger.promote`), uploads it
to the job's run under `approved/<target>/`, registers it as a new version of the same model
(tagged `convrepair.promoted_from`, which the daemon never processes), downloads what MLflow now
serves for that version and verifies it with `--require-approval`; only then does the alias
(`approved` by default) move to it. A promotion that does not verify is deleted again.

Two reviewers at once: a decision is written back only if the transparency checkpoint in MLflow
is still the one it started from, else nothing is written (MLflow has no compare-and-swap, so a
window of one upload remains; the checkpoint signature still exposes a fork to `verify`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.fsutil import sha256_file
from convrepair_plugins.mlflow.client import RegistryError
from convrepair_plugins.mlflow.registry import EXPERIMENT, LOG, TAG_PROMOTED_FROM, MlflowRegistry
from convrepair_plugins.mlflow.uris import parse_models_uri, pick_target, targets_of, with_target  # noqa: F401

LEDGER_RUN = "convrepair transparency log"
TLOG = "transparency"


@dataclass
class RemoteLog:
    model: str
    version: str
    target: str
    run_id: str
    root: Path  # the rebuilt ledger folder
    log: Path

    @property
    def where(self) -> str:
        return f"models:/{self.model}/{self.version}"


def is_mlflow_uri(text: str) -> bool:
    return str(text).startswith(("models:/", "runs:/"))


def decide(registry: MlflowRegistry, uri: str, key: Path, decision: str, text: str, trust: Path,
           promote_alias: str | None = None) -> dict[str, Any]:
    """Approve or reject the log behind URI; with `promote_alias`, also promote (see module doc)."""
    from convrepair.ledger.decide import decide as ledger_decide
    from convrepair.ledger.keys import read_trust

    trusted = read_trust(trust)
    with tempfile.TemporaryDirectory(prefix="convrepair-review-") as tmp:
        remote = _rebuild(registry, uri, Path(tmp), trust)
        seen = _remote_checkpoint(registry)
        if _promoted(registry, remote) and decision == "approved" and promote_alias:
            raise BadInput(f"{remote.where} was promoted already; a log gets one decision")
        plans = []

        def plan(verified):
            from convrepair.ledger.promote import plan as make_plan

            plans.append(make_plan(remote.log, Path(tmp) / "promoted", key, model=_local_name(remote.model),
                                   version=remote.version, verified=verified))
            return plans[-1]

        record, _ = ledger_decide(remote.log, key, decision, text, trusted, plan if promote_alias else None)
        if _remote_checkpoint(registry) != seen:  # nothing is written yet: the reviewer just runs it again
            raise RegistryError(f"mlflow {registry.uri}: another decision was recorded while this one was made; "
                                "nothing was written, run the command again")
        _upload_tlog(registry, Path(tmp) / TLOG)
        target = remote.target  # every decision tag names its target: a version may hold several
        tags = {"convrepair.status": decision, "convrepair.decision": decision, f"convrepair.{target}.status": decision,
                f"convrepair.{target}.decision": decision, f"convrepair.{target}.decision_entry": Path(record.path).name,
                f"convrepair.{target}.reviewer": record.reviewer, f"convrepair.{target}.decision_text": text[:5000]}
        _tag(registry, remote, tags)
        out = {"decision": decision, "log": uri, "model": remote.model, "version": remote.version, "target": remote.target,
               "run_id": remote.run_id, "record": Path(record.path).name, "index": record.sequence, "promoted": None}
        if plans:
            out["promoted"] = _promote(registry, remote, plans[0].destination, trusted, promote_alias, Path(tmp))
        return out


def verify_uri(registry: MlflowRegistry, uri: str, trust: Path, require_approval: bool = False, chain: bool = False,
               pinned: Path | None = None):
    """`verify models:/NAME@approved`: download what MLflow serves and verify it (fails closed);
    PINNED: the caller's pinned checkpoint, as for a local log."""
    from convrepair.ledger.keys import read_trust
    from convrepair.ledger.verify import verify

    trusted = read_trust(trust)
    with tempfile.TemporaryDirectory(prefix="convrepair-verify-") as tmp:
        mv = _model_version(registry, uri) if uri.startswith("models:/") else None
        if mv is not None and TAG_PROMOTED_FROM in (mv.tags or {}):  # what is served: one target, promoted
            served = _download_version(registry, mv, Path(tmp) / "served")
            logs = sorted(p for p in (served / "convrepair").glob("*.dsse.json") if p.name != "promotion.dsse.json")
            if not logs:
                raise BadInput(f"{uri}: no signed repair log among the served artifacts")
            result = verify(logs[0], trusted, require_approval, chain, pinned)
        else:
            remote = _rebuild(registry, uri, Path(tmp), trust)
            result = verify(remote.log, trusted, require_approval, chain, pinned)
        result.log = uri
        return result


@contextlib.contextmanager
def open_log(registry: MlflowRegistry, uri: str, trust: Path) -> Iterator[Path]:
    """`show models:/…`: the log behind URI in its rebuilt ledger folder, for as long as the block runs."""
    with tempfile.TemporaryDirectory(prefix="convrepair-show-") as tmp:
        yield _rebuild(registry, uri, Path(tmp), trust).log


def list_model(registry: MlflowRegistry, uri: str, trust: Path) -> list[dict[str, Any]]:
    """`review --registry models:/NAME`: one row per (version, target) log of NAME, each verified
    first (`convrepair.ledger.review` rows, named by their models:/NAME/VERSION/TARGET URI)."""
    from convrepair.ledger.keys import read_trust
    from convrepair.ledger.review import list_logs

    parsed = parse_models_uri(uri)
    if parsed.version is not None or parsed.alias is not None:
        raise BadInput(f"{uri}: review lists a whole model: --registry models:/{parsed.name}")
    trusted = read_trust(trust)
    name = parsed.name.replace("'", "\\'")
    versions = registry.server.call(f"listing the versions of {parsed.name}",
                                    lambda: registry.client.search_model_versions(f"name='{name}'"))
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = mv.tags or {}
        if TAG_PROMOTED_FROM in tags:
            continue  # a promoted copy: its log is listed with the version it came from
        for target in targets_of(tags):
            where = f"models:/{mv.name}/{mv.version}/{target}"
            with tempfile.TemporaryDirectory(prefix="convrepair-review-") as tmp:
                try:
                    remote = _rebuild(registry, where, Path(tmp), trust)
                    found = list_logs(remote.log.parent, trusted)
                except BadInput as exc:
                    found = [{"status": "invalid", "verdict": tags.get(f"convrepair.{target}.verdict"), "reason": exc.one_line()}]
            for row in found:
                promoted = tags.get(f"convrepair.{target}.promoted_version")
                rows.append(dict(row, log=where, path=where, model=mv.name, version=str(mv.version), target_name=target,
                                 target=target, promoted=[f"models:/{mv.name}/{promoted}"] if promoted else []))
    return rows


# --- the ledger folder, rebuilt ------------------------------------------------------------


def _rebuild(registry: MlflowRegistry, uri: str, root: Path, trust: Path) -> RemoteLog:
    client, server = registry.client, registry.server
    if uri.startswith("models:/"):
        mv = _model_version(registry, uri)
        tags = mv.tags or {}
        if TAG_PROMOTED_FROM in tags:
            raise BadInput(f"{uri} is a promoted copy (of version {tags[TAG_PROMOTED_FROM]}); decide on the version it came from")
        model, version = mv.name, str(mv.version)
        target = pick_target(uri, f"models:/{model}/{version}", tags, parse_models_uri(uri).target)
        run_id = tags.get(f"convrepair.{target}.run_id") or (tags.get("convrepair.run_id")
                                                               if tags.get("convrepair.target") == target else None)
        if not run_id:
            raise BadInput(f"{uri}: no run recorded for target {target} (has the daemon finished it?)")
    elif uri.startswith("runs:/"):
        parts = uri[len("runs:/"):].strip("/").split("/")
        run_id = parts[0]
        run = server.call(f"reading run {run_id}", lambda: client.get_run(run_id))
        tags = run.data.tags
        if "convrepair.model" not in tags:
            raise BadInput(f"{uri}: not a convrepair run")
        model, version, target = tags["convrepair.model"], tags["convrepair.version"], tags["convrepair.for_target"]
    else:
        raise BadInput(f"{uri}: not an MLflow model or run URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/TARGET)")
    shutil.copy2(trust, root / "trust.json")
    ledger = _ledger_run(registry, create=False)
    if ledger is not None:
        try:
            server.download(f"runs:/{ledger}/{TLOG}", str(root), "downloading the transparency log")
        except RegistryError as exc:
            if "not found" not in str(exc) and "Failed to download" not in str(exc):
                raise
    results = root / _local_name(model) / version / "convrepair"
    results.mkdir(parents=True)
    got = Path(server.download(f"runs:/{run_id}/{target}", str(results), f"downloading the results of {model} v{version}"))
    _place_source(registry, model, version, results.parent)
    log = got / LOG
    if not log.is_file():
        raise BadInput(f"models:/{model}/{version}: its results hold no signed log (the daemon ran without --sign-key)")
    return RemoteLog(model, version, target, run_id, root, log)


def _place_source(registry: MlflowRegistry, model: str, version: str, version_dir: Path) -> None:
    """The registered version's own files where the log names its source (`../../model.<ext>`),
    so verify checks that what the job converted is what the registry holds."""
    client, server = registry.client, registry.server
    source = server.call(f"resolving models:/{model}/{version}", lambda: client.get_model_version_download_uri(model, version))
    got = Path(server.download(source, str(version_dir.parent / ".source"), f"downloading models:/{model}/{version}"))
    for item in sorted(got.iterdir()) if got.is_dir() else [got]:
        if not (version_dir / item.name).exists():
            item.rename(version_dir / item.name)


def _model_version(registry: MlflowRegistry, uri: str):
    client, server = registry.client, registry.server
    parsed = parse_models_uri(uri)
    if parsed.alias is not None:
        return server.call(f"resolving {uri}", lambda: client.get_model_version_by_alias(parsed.name, parsed.alias))
    if parsed.version is None:
        raise BadInput(f"{uri}: name a version (models:/NAME/VERSION[/TARGET]) or an alias (models:/NAME@ALIAS)")
    return server.call(f"reading {uri}", lambda: client.get_model_version(parsed.name, parsed.version))


def _download_version(registry: MlflowRegistry, mv, into: Path) -> Path:
    source = registry.server.call("resolving the served artifacts",
                                  lambda: registry.client.get_model_version_download_uri(mv.name, mv.version))
    into.mkdir(parents=True)
    return Path(registry.server.download(source, str(into), f"downloading models:/{mv.name}/{mv.version}"))


def _ledger_run(registry: MlflowRegistry, create: bool) -> str | None:
    client, server = registry.client, registry.server
    experiment = server.call("reading experiment convrepair", lambda: client.get_experiment_by_name(EXPERIMENT))
    if experiment is None:
        if not create:
            return None
        experiment_id = server.call("creating experiment convrepair", lambda: client.create_experiment(EXPERIMENT))
    else:
        experiment_id = experiment.experiment_id
    runs = server.call("finding the transparency log", lambda: client.search_runs(
        [experiment_id], "tags.`convrepair.ledger` = 'transparency'", max_results=1))
    if runs:
        return runs[0].info.run_id
    if not create:
        return None
    run = server.call("creating the transparency log run", lambda: client.create_run(
        experiment_id, tags={"convrepair.ledger": "transparency"}, run_name=LEDGER_RUN))
    return run.info.run_id


def _remote_checkpoint(registry: MlflowRegistry) -> str | None:
    """The transparency log's checkpoint as MLflow holds it now (None: no decisions yet)."""
    ledger = _ledger_run(registry, create=False)
    if ledger is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = registry.server.download(f"runs:/{ledger}/{TLOG}/checkpoint", tmp, "reading the transparency checkpoint")
        except RegistryError as exc:
            if "not found" in str(exc) or "Failed to download" in str(exc):
                return None
            raise
        return Path(path).read_text()


def _upload_tlog(registry: MlflowRegistry, directory: Path) -> None:
    run_id = _ledger_run(registry, create=True)
    registry.server.call("uploading the transparency log",
                         lambda: registry.client.log_artifacts(run_id, str(directory), artifact_path=TLOG))


def _tag(registry: MlflowRegistry, remote: RemoteLog, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        registry.server.call(f"tagging {remote.where}", lambda k=key, v=value: registry.client.set_model_version_tag(
            remote.model, remote.version, k, v))


def _promoted(registry: MlflowRegistry, remote: RemoteLog) -> bool:
    mv = registry.server.call(f"reading {remote.where}", lambda: registry.client.get_model_version(remote.model, remote.version))
    return (mv.tags or {}).get(f"convrepair.{remote.target}.promoted_version") is not None


def _promote(registry: MlflowRegistry, remote: RemoteLog, promoted: Path, trusted: dict, alias: str, tmp: Path) -> dict:
    from convrepair.ledger.verify import verify

    client, server = registry.client, registry.server
    artifact_path = f"approved/{remote.target}"
    server.call(f"uploading the promoted version to run {remote.run_id}",
                lambda: client.log_artifacts(remote.run_id, str(promoted), artifact_path=artifact_path))
    log_sha256 = sha256_file(remote.log)
    tags = {TAG_PROMOTED_FROM: remote.version, "convrepair.target": remote.target, "convrepair.log_sha256": log_sha256,
            "convrepair.status": "verifying"}
    mv = server.call(f"registering the promoted version of {remote.model}", lambda: client.create_model_version(
        remote.model, f"runs:/{remote.run_id}/{artifact_path}", run_id=remote.run_id, tags=tags,
        description=f"convrepair: approved {remote.target} of version {remote.version}"))
    served = _download_version(registry, mv, tmp / "served")
    logs = sorted((served / "convrepair").glob(remote.log.name))
    result = verify(logs[0], trusted, require_approval=True) if logs else None
    where = f"models:/{remote.model}/{mv.version}"
    if result is None or not result.ok:
        server.call(f"removing {where}", lambda: client.delete_model_version(remote.model, mv.version))
        reason = result.reason if result is not None else "the served artifacts hold no signed log"
        raise PromotionFailed(f"{where}: what MLflow serves does not verify ({reason}); not promoted, version deleted")
    server.call(f"setting alias @{alias}", lambda: client.set_registered_model_alias(remote.model, alias, mv.version))
    server.call(f"tagging {where}", lambda: client.set_model_version_tag(remote.model, mv.version, "convrepair.status", "approved"))
    _tag(registry, remote, {f"convrepair.{remote.target}.promoted_version": str(mv.version)})
    return {"model_uri": f"models:/{remote.model}@{alias}", "version": str(mv.version), "verified": result.to_json()}


class PromotionFailed(BadInput):
    """What MLflow would serve does not verify: nothing was promoted (exit 1)."""

    exit_code = 1


def _local_name(model: str) -> str:
    """The model's name as a folder (and a Triton model name) in the rebuilt ledger."""
    from convrepair_plugins.mlflow.registry import folder_name

    clean = folder_name(model)
    return clean if clean[:1].isalnum() else f"m{clean}"
