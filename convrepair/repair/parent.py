"""The parent's side of a contained repair: the verdict that is signed is computed here, from the
held-out arrays the worker left (`evidence`), never taken from the worker's report. The parent
runs no model: it reads `.npy` files, counts with the one judge, applies `final_verdict`, decides
whether the repaired model is published, hashes what it publishes, and lists in `provenance`
which fields it computed and which the worker reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convrepair.repair.outcome import SUCCESS, RepairConfig, final_verdict

WRITTEN = ("repaired", "improved", "unproven")  # verdicts whose model is written (exit 1 but the last)
PARENT_FIELDS = ["verdict", "verdict_reason", "samples_needed", "max_flip_rate", "held_out", "output.sha256",
                 "output.files"]
WORKER_FIELDS = ["check_before", "check_after", "check_before_held_out", "attempts", "choice", "cost", "lenses",
                 "stages", "splits", "seconds", "job", "held-out outputs of source, target and repaired model (.npy)",
                 "tolerance and guard of the held-out check"]


def judge_repair(payload: dict[str, Any], evidence: Path, config: RepairConfig) -> tuple[dict[str, Any], int, bool]:
    """(payload with the parent's verdict, exit code, publish the model?)."""
    from convrepair.repair.evidence import parent_held_out

    held = parent_held_out(evidence)
    ruling = final_verdict(held, config.max_flip_rate, config.accept_improvement, config.max_break_rate)
    worker = {key: payload.get(key) for key in ("verdict", "verdict_reason", "samples_needed")}
    out = dict(payload)
    out.update(verdict=ruling.verdict, verdict_reason=ruling.reason, samples_needed=ruling.samples_needed,
               held_out=held.to_json(), max_flip_rate=config.max_flip_rate)
    written = ruling.verdict in WRITTEN or (ruling.verdict == "already_equivalent" and config.force)
    publish = written and payload.get("output") is not None
    if not publish:
        out["output"] = None
    out["provenance"] = {"parent": PARENT_FIELDS, "worker": WORKER_FIELDS,
                         "worker_verdict": worker, "agrees": worker["verdict"] == ruling.verdict}
    return out, 0 if ruling.verdict in SUCCESS else 1, publish


def hash_output(payload: dict[str, Any], out: Path) -> dict[str, Any]:
    """The published model's digests, computed here from the files in place."""
    from convrepair.fsutil import combined_digest, file_digests

    digests = file_digests(Path(out))
    output = dict(payload["output"] or {}, path=str(out), sha256=combined_digest(digests), files=digests)
    return payload | {"output": output}
