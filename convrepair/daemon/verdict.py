"""The job process's side of a contained repair: what is signed is decided here, never by the worker.

The contained worker converts and repairs and leaves the held-out outputs of the source, the
target and the repaired model as `.npy` files in an evidence folder outside its scratch; this
process (which never loads model code) recomputes the verdict from those arrays with the one
judge (`repair.parent.judge_repair`), names the source itself, accepts a target and a repaired
model only inside the folders it gave the worker, hashes them itself, and drops a repaired model
the verdict does not publish. `provenance` lists which fields it computed and which the worker
reported (those change no verdict). Reads `.npy`, JSON and bytes only: no framework is imported.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convrepair.errors import BadInput

if TYPE_CHECKING:
    from convrepair.repair.outcome import RepairConfig

CONVERTED = "converted"  # the worker's stage folders inside a job's scratch
REPAIRED = "repaired"
PARENT_HASHED = ["source.path", "source.sha256", "target.sha256", "files (the signed log's subjects)"]


def judge_job(report: dict[str, Any], evidence: Path, config: RepairConfig, scratch: Path,
              model_file: Path) -> dict[str, Any]:
    """The report to sign: the worker's, with the parent's verdict, held-out figures, digests and provenance."""
    from convrepair.fsutil import combined_digest, file_digests
    from convrepair.repair.parent import hash_output, judge_repair

    if not isinstance(report, dict):
        raise BadInput("the contained worker returned no repair report", scratch)
    report, _code, publish = judge_repair(report, evidence, config)
    source = dict(report.get("source") or {}, path=str(model_file), sha256=combined_digest(file_digests(Path(model_file))))
    target_path = _inside(report.get("target"), scratch / CONVERTED, "converted target")
    target = dict(report["target"], path=str(target_path), sha256=combined_digest(file_digests(target_path)))
    report = report | {"source": source, "target": target}
    if publish:
        report = hash_output(report, _inside(report.get("output"), scratch / REPAIRED, "repaired model"))
    else:  # the verdict writes nothing: whatever the worker left there is not published
        shutil.rmtree(scratch / REPAIRED, ignore_errors=True)
    provenance = dict(report["provenance"])
    provenance["parent"] = [*provenance["parent"], *PARENT_HASHED]
    return report | {"provenance": provenance}


def _inside(ref: Any, folder: Path, what: str) -> Path:
    """The path the worker reported for `what`, accepted only when it lies in `folder` and exists."""
    raw = ref.get("path") if isinstance(ref, dict) else None
    path = Path(str(raw)) if raw else None
    if path is None or not path.exists() or not path.resolve().is_relative_to(folder.resolve()) \
            or path.resolve() == folder.resolve():
        raise BadInput(f"the worker reported a {what} outside its stage ({raw!r})", folder)
    return path
