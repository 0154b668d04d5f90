"""What a job's models may read is the parent's choice, never the registry's.

A model's `convrepair.toml` names files (data, calibration); the contained worker is granted read
access to them and to the model with its companions (`NAME.*` beside it). Each must resolve —
symlinks followed — inside the model's own registry folder, or inside a folder the operator named
on the command line (`--allow-read`). And whatever the config says, the daemon's state directory
and its signing key are never among them (nor a folder holding them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from convrepair.errors import BadInput


def outside(path: Path, model_dir: Path, allowed: Iterable[Path] = ()) -> bool:
    """Whether `path` (symlinks followed) lies outside `model_dir` and every `allowed` folder."""
    real = Path(os.path.realpath(path))
    roots = [Path(os.path.realpath(model_dir)), *(Path(os.path.realpath(a)) for a in allowed)]
    return not any(real == root or real.is_relative_to(root) for root in roots)


def companions(model_file: Path) -> list[Path]:
    """The model and what travels beside it (`NAME.*`: sidecar, external data), as the worker is granted them."""
    model_file = Path(model_file)
    found = [model_file]
    if model_file.parent.is_dir():
        found += sorted(p for p in model_file.parent.iterdir() if p.name.startswith(model_file.name + "."))
    return found


def check_reads(reads: Iterable[Path | None], model_dir: Path, allowed: Iterable[Path] = (),
                never: Iterable[Path | None] = ()) -> list[Path]:
    """`reads` (None entries dropped), each checked; BadInput (one line) for the first that escapes
    `model_dir` and `allowed`, or that is, lies in or holds one of `never` (keys, the state dir)."""
    allowed, out = list(allowed), []
    forbidden = [Path(os.path.realpath(p)) for p in never if p is not None]
    for path in reads:
        if path is None:
            continue
        real = Path(os.path.realpath(path))
        for secret in forbidden:
            if real == secret or real.is_relative_to(secret) or secret.is_relative_to(real):
                raise BadInput(f"{path} is or holds {secret}, which a job's models may never read")
        if outside(path, model_dir, allowed):
            raise BadInput(f"{path} resolves to {real}, outside the model's folder {model_dir}"
                           " (name it with --allow-read to grant it)")
        out.append(Path(path))
    return out
