"""Where the ledger's pieces are: one discovery rule for the trust file and the transparency log,
the same for `show`, `approve`, `reject`, `review` and `verify`, and for the CLI and daemon layouts.

    trust file   --trust FILE, else the nearest trust.json at or above the log (a registry root),
                 else the nearest at or above the current directory (a project run by hand)
    decisions    transparency/ in the nearest directory at or above the log that holds trust.json
                 or transparency/ (a registry root; a promoted version's own snapshot), else
                 beside the trust file in use

The daemon layout (REGISTRY/trust.json, logs under REGISTRY/MODEL/VERSION/convrepair/TARGET/) and
the CLI layout (./trust.json, logs anywhere below or beside it, commands run from ./) both resolve
to the one trust.json, and decisions always land beside it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from convrepair.errors import BadInput

TRUST_FILE = "trust.json"
TLOG_DIR = "transparency"
FIX_TRUST = ("create one with `convrepair keys init --name reviewer --dir keys --trust trust.json --role reviewer` "
             "(and `--name service … --role service` for the signing key), or pass --trust FILE")


def _walk(start: Path) -> list[Path]:
    start = Path(start).resolve()
    here = start if start.is_dir() else start.parent
    return [here, *here.parents]


def _checked(candidate: Path) -> Path:
    """A trust file anyone may write, or another user owns, is refused (a shared /tmp must not lend
    its trust.json to every log below it)."""
    info = candidate.stat()
    if info.st_mode & stat.S_IWOTH or info.st_uid not in (os.getuid(), 0):
        raise BadInput("trust file is writable by anyone or owned by another user; refusing it (pass --trust)", candidate)
    return candidate


def find_trust(start: Path, cwd: Path | None = None) -> Path:
    """The trust file for START (a log or a directory), by the rule in the module doc."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    for directory in (*_walk(start), *_walk(cwd)):
        candidate = directory / TRUST_FILE
        if candidate.is_file():
            return _checked(candidate)
    below = sorted(cwd.glob(f"*/{TRUST_FILE}"))
    if below:  # the usual slip: the trust file sits in a registry folder the log is not in
        hint = f"pass --trust {os.path.relpath(below[0], cwd)}, or keep the log under {os.path.relpath(below[0].parent, cwd)}/"
        raise BadInput(f"no {TRUST_FILE} at or above it or the current directory; {hint}", start)
    raise BadInput(f"no {TRUST_FILE} at or above it or the current directory; {FIX_TRUST}", start)


def ledger_root(log_path: Path, trust: Path | None = None) -> Path:
    """The directory whose transparency/ holds the decisions about the log at LOG_PATH."""
    for directory in _walk(log_path):
        if (directory / TRUST_FILE).is_file() or (directory / TLOG_DIR).is_dir():
            return directory
    if trust is None:
        try:
            trust = find_trust(log_path)
        except BadInput:
            return _walk(log_path)[0]
    return Path(trust).resolve().parent


def log_name(log_path: Path, root: Path) -> str:
    """The name a decision gives a log: its path relative to the ledger root."""
    return Path(os.path.relpath(Path(log_path).resolve(), Path(root).resolve())).as_posix()
