"""One job, run in its own process: convert → check → repair → sign, into the registry.

Everything is written to `<version>/convrepair/.tmp-<job>/` and renamed to
`<version>/convrepair/<target>/` at the very end, so the registry never holds a half-written
result and a job redone after a crash leaves exactly one signed log.

    python -m convrepair.daemon.job JOB.json     (the daemon starts this; exit 0 ok, 3 failed)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

EXIT_FAILED = 3


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    from convrepair.convert import convert, load_calibration
    from convrepair.daemon.config import load_model_config
    from convrepair.ledger.log import now, write_signed_log
    from convrepair.lenses import LensConfig
    from convrepair.plugins import default_registry
    from convrepair.repair import RepairConfig, run_repair

    registry = default_registry()
    started = now()
    version_dir = Path(spec["version_dir"])
    final = version_dir / "convrepair" / spec["target"]
    if final.exists():  # finished before a crash: never a second log
        return {"status": "done", "results": str(final), "note": "already complete"}
    config = load_model_config(version_dir.parent / "convrepair.toml", registry.targets())
    tmp = version_dir / "convrepair" / f".tmp-{spec['job_id']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    calibration = load_calibration(config.calibration) if config.calibration else None
    converted = convert(registry, Path(spec["model_file"]), spec["target"], out_dir=tmp / "converted", calibration=calibration)
    out = tmp / "repaired" / converted.output.path.name
    strategy = "restore" if config.policy == "none" else config.policy
    repair_config = RepairConfig(data=config.data, strategy=strategy, budget_seconds=config.budget_seconds,
                                 atol=config.atol, rtol=config.rtol, accept_improvement=config.accept_improvement,
                                 max_restores=0 if config.policy == "none" else 5, lenses=LensConfig(names=config.lenses) if config.lenses else None, prefer=config.prefer)
    report = run_repair(registry, Path(spec["model_file"]), converted.output.path, out, repair_config).to_json()
    (tmp / "repair.json").write_text(json.dumps(report, indent=2))
    if spec.get("sign_key"):
        write_signed_log(report, tmp / "repair.log.dsse.json", Path(spec["sign_key"]), started)
    # the relative paths inside the log point into tmp/; the rename moves them together
    tmp.rename(final)
    return {"status": "done", "results": str(final), "verdict": report["verdict"],
            "label_agreement": (report.get("check_before") or {}).get("label_agreement")}


def main(argv: list[str] | None = None) -> int:
    from convrepair.errors import ConvrepairError, exception_text

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = run_job(spec)
    except ConvrepairError as exc:
        print(json.dumps({"status": "failed", "error": exc.one_line()}))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the job fails, the daemon lives on
        print(json.dumps({"status": "failed", "error": f"{type(exc).__name__}: {exception_text(exc, 300)}"}))
        return EXIT_FAILED
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
