"""The one-line `next:` hint each command ends with: what a user runs after it, with their own paths.

Kept apart from the commands so that every hint reads alike and a test can hold them to the
README's sequence (convert → check → repair → show → approve → verify). Silent with `-q` and
`--json -`, like every human message (`next_step`).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from convrepair.cli.common import next_step

YOUR_DATA = "YOUR_DATA.npz"


def after_convert(source: Path, output: Path, data: Path | None, json_target: str | None) -> None:
    """A conversion proves nothing by itself: the check is next."""
    next_step(f"convrepair check {_q(source)} {_q(output)} --data {_q(data) if data else YOUR_DATA}",
              "compare the converted model with its source on your data", json_target)


def after_check(payload: dict, source: Path, target: Path, data: Path | None, strict: bool,
                golden: bool, json_target: str | None) -> None:
    verdict = payload.get("verdict")
    pair = f"{_q(source)} {_q(target)}"
    data_arg = _q(data) if data else YOUR_DATA
    if verdict == "equivalent":
        if data is None and not golden:
            next_step(f"convrepair check {pair} --data {YOUR_DATA}", "these were uniform random inputs, not your data",
                      json_target)
        elif payload.get("latent"):
            next_step(f"convrepair repair {pair} --data {data_arg} --out {_q(_repaired(target))}",
                      "a latent fault the samples did not reveal: restore it", json_target)
        elif not strict and not golden:
            next_step(f"convrepair check {pair} --data {data_arg} --strict",
                      "also audit every parameter and attribute for latent faults", json_target)
        else:
            next_step(f"deploy {_q(target)}", "it behaves as the source on these samples", json_target)
    elif verdict == "discrepant" and not golden:
        fault = ((payload.get("localization") or {}).get("fault") or {}).get("node")
        next_step(f"convrepair repair {pair} --data {data_arg} --out {_q(_repaired(target))} --sign-key keys/service.key",
                  f"repair the fault{' at ' + fault if fault else ''} and prove it on held-out samples", json_target)
    elif verdict == "discrepant":
        next_step(f"convrepair check SOURCE_MODEL {_q(target)} --data {data_arg}",
                  "check against the source model itself to localize and repair", json_target)
    else:
        samples = int(payload.get("samples") or 100)
        next_step(f"convrepair check {pair} --data {data_arg} --samples {max(2 * samples, 200)}",
                  "more samples, to decide", json_target)


def after_repair(payload: dict, log: Path | None, out: Path, json_target: str | None) -> None:
    verdict = payload.get("verdict")
    if log is not None:
        next_step(f"convrepair show {_q(log)} --html page.html",
                  "a person reviews it, then approves or rejects it with a reviewer key", json_target)
    elif verdict in ("repaired", "improved"):
        next_step("repeat with --sign-key keys/service.key", f"a signed log a person reviews and approves before {_q(out)} ships",
                  json_target)
    elif verdict == "already_equivalent":
        next_step("deploy the target as it is", "no repair was needed", json_target)
    elif verdict == "unproven":
        from convrepair.repair.outcome import SPLITS

        needed = payload.get("samples_needed")
        total = f"at least {math.ceil(needed / SPLITS['held_out'])} samples" if needed else "more samples"
        next_step(f"repeat with --data holding {total}",
                  f"the held-out split ({(payload.get('held_out') or {}).get('n', 'too few')} samples) cannot prove "
                  "the flip-rate bound", json_target)
    else:
        next_step("convrepair check SOURCE TARGET --data DATA --localize --json check.json",
                  "read the localized fault; the repair could not remove it", json_target)


def after_approve(log: Path, trust: Path | None, json_target: str | None) -> None:
    """Approved without --promote: what a pipeline runs to rely on the decision."""
    trust_arg = f" --trust {_q(trust)}" if trust else ""
    next_step(f"convrepair verify {_q(log)}{trust_arg} --require-approval",
              "what a pipeline runs before it deploys", json_target)


def _repaired(target: Path) -> Path:
    return target.with_name(f"{target.stem}-repaired{target.suffix}")


def _q(path: Path | str) -> str:
    """PATH as the user would type it (relative under the current folder), quoted for the shell."""
    import os

    resolved, here = Path(path).resolve(), Path.cwd().resolve()
    return shlex.quote(os.path.relpath(resolved, here) if resolved.is_relative_to(here) else str(path))
