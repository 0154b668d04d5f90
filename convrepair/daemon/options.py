"""The daemon's options, checked in one place: the CLI, the Python API and a unit file's
`$CONVREPAIR_OPTS` all meet the same rules, and a bad value is one line naming the flag (exit 2),
never a crash deep in a socket or SQLite call."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from convrepair.errors import BadInput, ConvrepairError


@dataclass
class DaemonConfig:
    registry: Path
    state_dir: Path
    once: bool = False
    workers: int = 1
    quiet_seconds: float = 5.0
    scan_interval: float = 2.0  # rescans while a version waits for its quiet period
    rescan_seconds: float = 60.0  # a full scan when nothing happened (events a watcher can miss)
    job_timeout: float = 900.0
    lease_seconds: float = 30.0  # a running job's lease, renewed while it runs; once run out, it is requeued
    parse_grace_seconds: float | None = None  # default: 10 quiet periods
    memory_mb: int = 8192
    grace_seconds: float = 30.0
    sign_key: Path | None = None
    poll: bool = False
    registry_kind: str = "directory"
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    executor: str = "local"  # local worker processes, or "ray" (convrepair.daemon.executors)
    ray_address: str | None = None
    backoff_seconds: float = 10.0  # a job that met a registry outage waits this long, doubling per outage in a row …
    max_backoff_seconds: float = 300.0  # … up to this
    allow_read: tuple[Path, ...] = field(default_factory=tuple)  # folders a model's config may name besides its own

    def __post_init__(self) -> None:
        validate(self)


# field -> (flag, smallest allowed, largest allowed, whether the smallest itself is allowed)
_NUMBERS = {
    "workers": ("--workers", 1, 4096, True),
    "quiet_seconds": ("--quiet-seconds", 0, None, True),
    "scan_interval": ("--scan-interval", 0, None, False),
    "rescan_seconds": ("--rescan-seconds", 0, None, False),
    "job_timeout": ("--job-timeout", 0, None, False),
    "lease_seconds": ("--lease-seconds", 0, None, False),
    "parse_grace_seconds": ("--parse-grace-seconds", 0, None, True),
    "memory_mb": ("--memory-mb", 0, None, True),
    "grace_seconds": ("--grace-seconds", 0, None, True),
    "http_port": ("--http-port", 1, 65535, True),
    "backoff_seconds": ("--backoff-seconds", 0, None, False),
    "max_backoff_seconds": ("--max-backoff-seconds", 0, None, False),
}


def problems(config: DaemonConfig) -> list[str]:
    """Every option of `config` that is out of range, as `--flag: problem`."""
    out = []
    for name, (flag, low, high, inclusive) in _NUMBERS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append(f"{flag}: must be a number, got {value!r}")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{flag}: must be a finite number, got {value}")
        elif (value < low if inclusive else value <= low) or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else (f"at least {low}" if inclusive else f"more than {low}")
            out.append(f"{flag}: must be {bound}, got {value:g}")
    if config.max_backoff_seconds < config.backoff_seconds:
        out.append(f"--max-backoff-seconds: must be at least --backoff-seconds ({config.backoff_seconds:g}), "
                   f"got {config.max_backoff_seconds:g}")
    for folder in config.allow_read:
        if not Path(folder).is_dir():
            out.append(f"--allow-read: {folder} is not a directory")
    return out


def validate(config: DaemonConfig) -> None:
    found = problems(config)
    if found:
        raise BadInput("; ".join(found))


class RegistryUnavailable(ConvrepairError):
    """The registry could not be reached, so nothing could be done (`--once`): exit 1, one line."""

    exit_code = 1
