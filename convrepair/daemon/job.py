"""One job, run in its own process: convert → check → repair → sign, into the registry.

Everything is written to a scratch folder of its own attempt,
`<version>/convrepair/.tmp-job<id>-attempt<n>/`, which is removed when the attempt fails, and
renamed to `<version>/convrepair/<target>/` when it succeeds: the registry never holds a
half-written result, and every path the report and the signed log name is the final one (the
log is signed in place after the rename; a crash between the two is completed by the next
attempt, which finds the result without its log).

The models run in two contained workers, one after the other, so that the converter's peak
(tf2onnx: 4–5 GB for a ResNet50) is never added to the check's: the first converts, and the
source's ONNX IR that localization walks is kept in the IR cache (the state dir's `ir-cache`) —
the conversion itself when it is that export, else one more export in a worker of its own
(`ir_export.export_ahead`); the second checks and repairs, reading that IR from the cache (held
to its fidelity there). convert → check → repair exports the source once, and once per source
across jobs.

    python -m convrepair.daemon.job JOB.json     (the daemon starts this; exit 0 ok, 3 failed)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

EXIT_FAILED = 3
REPORT = "repair.json"
LOG = "repair.log.dsse.json"
JOB = "job.json"


def scratch_name(job_id: int, attempt: int | str) -> str:
    """The scratch folder of one attempt of one job (a sibling of the final results folder);
    attempt "*" makes the glob of every attempt's."""
    return f".tmp-job{job_id}-attempt{attempt}"


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("remote"):  # a remote registry (MLflow): fetch the version, run this on the copy, publish
        from convrepair.daemon.registry import run_remote_job

        return run_remote_job(spec, run_job)
    from convrepair.daemon.config import load_model_config
    from convrepair.daemon.reads import check_reads, companions
    from convrepair.daemon.verdict import CONVERTED, REPAIRED, judge_job
    from convrepair.ledger.log import now
    from convrepair.lenses import LensConfig
    from convrepair.plugins import default_registry
    from convrepair.repair import RepairConfig, run_repair

    registry = default_registry()
    started = now()
    version_dir = Path(spec["version_dir"])
    final = version_dir / "convrepair" / spec["target"]
    if final.exists():  # finished before a crash: never a second log
        return _completed(final, spec)
    allowed = [Path(p) for p in spec.get("allow_read") or []]
    config = load_model_config(version_dir.parent / "convrepair.toml", registry.targets(), allowed=allowed)
    reads = check_reads([*companions(Path(spec["model_file"])), config.data, config.calibration], version_dir.parent,
                        allowed, never_readable(spec))
    scratch = final.parent / scratch_name(spec["job_id"], spec.get("attempt", 1))
    scratch.mkdir(parents=True)  # unique per attempt: an existing one is an error, never reused
    evidence = Path(tempfile.mkdtemp(prefix="convrepair-evidence-"))  # the worker's held-out outputs, for us to judge
    strategy = "restore" if config.policy == "none" else config.policy
    repair_config = RepairConfig(data=config.data, strategy=strategy, budget_seconds=config.budget_seconds,
                                 atol=config.atol, rtol=config.rtol, accept_improvement=config.accept_improvement,
                                 max_restores=0 if config.policy == "none" else 5,
                                 lenses=LensConfig(names=config.lenses) if config.lenses else None, prefer=config.prefer,
                                 max_flip_rate=config.max_flip_rate, evidence_dir=evidence,
                                 force=True)  # an equivalent target is still the version's deployable output, named in the log
    try:
        from convrepair.contain.worker import run_contained

        cache = ir_cache_dir(spec)
        converted, ir_reads = convert_ahead(registry, spec, scratch, reads, config, cache)

        def contained(_send) -> dict[str, Any]:  # checks and repairs in a contained worker writing only to scratch
            from convrepair.job import JobContext

            out = scratch / REPAIRED / converted.name
            with JobContext(registry, ir_cache=cache) as job:
                return run_repair(registry, Path(spec["model_file"]), converted, out, repair_config, job=job).to_json()

        report, containment = run_contained(contained, reads=[*reads, *ir_reads], writes=[scratch, evidence],
                                            trust_code=config.trust_model_code)
        # the verdict that is signed is ours, from the arrays, never the worker's word
        report = judge_job(report, evidence, repair_config, scratch, Path(spec["model_file"]))
        report["containment"] = containment.to_json()
        _relocate_files(scratch, final)
        (scratch / REPORT).write_text(json.dumps(relocated(report, scratch, final), indent=2))
        (scratch / JOB).write_text(json.dumps({"schema": "convrepair.daemon-job/v1", "job": spec["job_id"],
                                               "attempt": spec.get("attempt", 1), "started": started}, indent=2))
        os.rename(scratch, final)  # atomic; fails when a result appeared meanwhile (then ours is dropped below)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if final.exists():
            return _completed(final, spec)
        raise
    finally:
        shutil.rmtree(evidence, ignore_errors=True)
    return _completed(final, spec)


def ir_cache_dir(spec: dict[str, Any]) -> Path | None:
    """Where the job keeps ONNX IRs: the job's `ir_cache` ("off": nowhere), else $CONVREPAIR_IR_CACHE,
    else the daemon's state dir (`ir-cache`), else the user's cache."""
    from convrepair import ircache

    if "ir_cache" in spec:
        return None if spec["ir_cache"] in (None, "off") else Path(spec["ir_cache"])
    if ircache.ENV not in os.environ and spec.get("state_dir"):
        return Path(spec["state_dir"]) / "ir-cache"
    return ircache.cache_dir()


def convert_ahead(registry, spec: dict[str, Any], scratch: Path, reads: list[Path], config, cache: Path | None
                  ) -> tuple[Path, list[Path]]:
    """Convert in a contained worker of its own, and have the source's IR in the cache: the
    converted model when the conversion is that very export (keeping a copy), else exported in
    one more worker. (The converted model, the cache folders the check's worker may read.)"""
    from convrepair import ircache
    from convrepair.contain.worker import run_contained
    from convrepair.convert import plan_route
    from convrepair.daemon.verdict import CONVERTED
    from convrepair.errors import BadInput
    from convrepair.ir_export import export_ahead
    from convrepair.localize.ir import export_options
    from convrepair.model import model_ref
    from convrepair.sidecar import read_sidecar

    model_file = Path(spec["model_file"])
    request = {"source": str(model_file), "target": spec["target"], "out_dir": str(scratch / CONVERTED),
               "calibration": str(config.calibration) if config.calibration else None, "lean": True}
    answer, _ = run_contained(_convert_task, request, reads=reads, writes=[scratch], trust_code=config.trust_model_code)
    converted = Path(answer["output"]).resolve()
    if not converted.is_relative_to((scratch / CONVERTED).resolve()) or not converted.exists():
        raise BadInput(f"the conversion's worker named an output outside its folder: {converted}", model_file)
    source = model_ref(model_file, registry)
    sidecar = read_sidecar(source.path) or registry.implied_sidecar(source)
    options = export_options(read_sidecar(converted))
    key = ircache.key_for(registry, source, sidecar, options)
    if key is None or cache is None:
        return converted, []
    same = answer.get("route") == [conv.name for conv in plan_route(registry, source.format, "onnx")] \
        and not {k: v for k, v in options.items() if k != "exporter"}  # no option but the exporter the converter chose
    if same and converted.is_file():
        meta = {"route": answer["route"], "where": "the job's conversion", "lean": bool(answer.get("lean"))}
        if ircache.lookup(cache, key) or ircache.store(cache, key, [converted], converted, meta):
            return converted, [cache / key]
    return converted, export_ahead(registry, model_file, options, cache=cache, trust_code=config.trust_model_code).reads


def _convert_task(_send, request: dict[str, Any]) -> dict[str, Any]:
    from convrepair.ir_export import run_export

    return run_export(request)


def never_readable(spec: dict[str, Any]) -> list[Path]:
    """What a job's models may never read, whatever its config names: the service key and the keys
    beside it, and the daemon's state (queue, lock, logs) — a remote job's own downloads aside."""
    never: list[Path] = []
    if spec.get("sign_key"):
        key = Path(spec["sign_key"])
        never += [key, *(p for p in key.parent.glob("*.key") if p != key)] if key.parent.is_dir() else [key]
    state = Path(spec["state_dir"]) if spec.get("state_dir") else None
    if state is not None and state.is_dir():
        never += [entry for entry in state.iterdir() if entry.name != "downloads"]
    return never


def _completed(final: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The result in its final place, signed there (again only when its log is missing)."""
    from convrepair.ledger.log import write_signed_log

    report = json.loads((final / REPORT).read_text())
    if spec.get("sign_key") and not (final / LOG).exists():
        started = json.loads((final / JOB).read_text())["started"] if (final / JOB).exists() else report.get("started")
        write_signed_log(report, final / LOG, Path(spec["sign_key"]), started)
    held = report.get("held_out") or {}  # the parent's count on the held-out split; check_before is the worker's
    agreement = held["label_agreement_before"] if "label_agreement_before" in held \
        else (report.get("check_before") or {}).get("label_agreement")
    return {"status": "done", "results": str(final), "verdict": report.get("verdict"), "label_agreement": agreement}


def relocated(value: Any, scratch: Path, final: Path) -> Any:
    """`value` with every path inside `scratch` rewritten to the same place inside `final`."""
    old, new = str(scratch), str(final)
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + os.sep) else value
    if isinstance(value, dict):
        return {key: relocated(item, scratch, final) for key, item in value.items()}
    if isinstance(value, list):
        return [relocated(item, scratch, final) for item in value]
    return value


def _relocate_files(scratch: Path, final: Path) -> None:
    """The sidecars the stages wrote name their own paths: point them at `final` too."""
    for path in scratch.rglob("*.convrepair.json"):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        moved = relocated(content, scratch, final)
        if moved != content:
            path.write_text(json.dumps(moved, indent=2))


def failure_label(exc: BaseException) -> str:
    """A short, bounded label for why a job failed (the `reason` of convrepair_jobs_failed_total)."""
    from convrepair.errors import ConvrepairError

    if getattr(exc, "transient", False):
        return "registry-unreachable"
    if isinstance(exc, ConvrepairError):
        return "".join("-" + c.lower() if c.isupper() else c for c in type(exc).__name__).lstrip("-")  # BadInput: bad-input
    return "os-error" if isinstance(exc, OSError) else "internal-error"


def main(argv: list[str] | None = None) -> int:
    from convrepair.errors import ConvrepairError, exception_text

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(sys.stdin.read() if argv[0] == "-" else Path(argv[0]).read_text())  # the daemon sends it on stdin
    try:
        result = run_job(spec)
    except ConvrepairError as exc:  # the model, data or config: the same again next time; an outage: wait for it
        transient = bool(getattr(exc, "transient", False))
        print(json.dumps({"status": "failed", "error": exc.one_line(), "retry": transient, "transient": transient,
                          "reason": failure_label(exc)}))
        return EXIT_FAILED
    except OSError as exc:  # the machine (disk full, a file system hiccup): may go differently
        print(json.dumps({"status": "failed", "error": f"{type(exc).__name__}: {exception_text(exc, 300)}", "retry": True,
                          "reason": failure_label(exc)}))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the job fails, the daemon lives on; a bug repeats itself
        print(json.dumps({"status": "failed", "error": f"{type(exc).__name__}: {exception_text(exc, 300)}", "retry": False,
                          "reason": failure_label(exc)}))
        return EXIT_FAILED
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
