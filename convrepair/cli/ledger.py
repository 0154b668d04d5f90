"""Signed repair logs: `keys init`, `approve`, `reject`, `verify`, `review`, `show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.cli.app import app, state
from convrepair.cli.common import JsonOption, emit_json, human, say

keys_app = typer.Typer(help="Signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

LogArgument = Annotated[Path, typer.Argument(metavar="LOG", help="The signed repair log.")]
TrustOption = Annotated[Optional[Path], typer.Option(
    "--trust", help="Trust file (default: the nearest trust.json at or above the log, else at or above the current directory).")]


def _trusted(trust: Path | None, start: Path) -> tuple[Path, dict]:
    from convrepair.ledger.keys import find_trust, read_trust

    path = trust if trust is not None else find_trust(start)
    return path, read_trust(path)


TargetOption = Annotated[Optional[str], typer.Option(
    "--target", help="For an MLflow version processed for several targets: which one (as models:/NAME/VERSION/TARGET).")]


def _remote(log_file: Path, target: str | None) -> tuple[object | None, str]:
    """(the remote registry holding LOG, its URI narrowed to --target); (None, path) for a local log."""
    from convrepair.daemon.registry import registry_for_uri
    from convrepair.errors import BadInput

    remote = registry_for_uri(str(log_file))
    if remote is None:
        if target:
            raise BadInput("--target names one of an MLflow version's targets; a local log is one target already", log_file)
        return None, str(log_file)
    return remote, remote.with_target(str(log_file), target) if hasattr(remote, "with_target") else str(log_file)


def _remote_trust(trust: Path | None) -> Path:
    from convrepair.ledger.keys import find_trust

    return trust if trust is not None else find_trust(Path.cwd())


def _remote_decision(log_file: Path, key: Path, decision: str, text: str, trust: Path | None, promote, json_out,
                     target: str | None = None) -> bool:
    """A decision on a log a remote registry holds (MLflow); False when LOG is a local path."""
    remote, uri = _remote(log_file, target)
    if remote is None:
        return False
    out = remote.decide(uri, key, decision, text, _remote_trust(trust), promote)
    emit_json(json_out, out)
    promoted = out.get("promoted")
    say(f"{decision}: {uri} (target {out.get('target')}; decision {out['index']} in the registry's transparency log)"
        + (f"\npromoted: {promoted['model_uri']} = version {promoted['version']}, verified" if promoted else ""), json_out)
    return True


def _shown(path: Path) -> str:
    """PATH as the user would type it: relative when it lies under the current directory."""
    import os

    resolved, here = Path(path).resolve(), Path.cwd().resolve()
    return os.path.relpath(resolved, here) if resolved.is_relative_to(here) else str(path)


@keys_app.command("init")
def keys_init(
    name: Annotated[str, typer.Option(help="Key name: NAME.key (private, 0600) and NAME.pub.")] = "convrepair",
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the key pair.")] = Path("."),
    trust: Annotated[Optional[Path], typer.Option(help="Also add the public key to this trust file …")] = None,
    role: Annotated[str, typer.Option(help="… with this role: service (signs logs), reviewer (decides, signs checkpoints) "
                                      "or log (signs checkpoints only).")] = "service",
    json_out: JsonOption = None,
) -> None:
    """Create an Ed25519 key pair (logs, decisions) and a P-256 pair (OpenSSF model-signing of promoted
    models); never overwrites. A name with only the Ed25519 pair gets its P-256 pair added."""
    from convrepair.ledger.keys import add_to_trust, init_keys, load_public_key

    pair = init_keys(name, directory)
    if trust is not None:
        add_to_trust(trust, load_public_key(pair.public), role, name)
    emit_json(json_out, {"name": name, "keyid": pair.keyid, "private": str(pair.private), "public": str(pair.public),
                         "model_signing_private": str(pair.p256_private), "model_signing_public": str(pair.p256_public),
                         "created": list(pair.created), "trust": str(trust) if trust else None, "role": role if trust else None})
    say(f"key {name}: {pair.keyid}\n  private: {pair.private} (mode 600)\n  public:  {pair.public}\n"
        f"  model-signing (P-256): {pair.p256_private} (mode 600), {pair.p256_public}", json_out)


@app.command()
def approve(
    log_file: LogArgument,
    key: Annotated[Path, typer.Option(help="Reviewer's private key (not the key that signed the log).")],
    comment: Annotated[str, typer.Option(help="Why it is approved.")] = "",
    promote: Annotated[Optional[Path], typer.Option(
        metavar="REPO", help="Promote into this Triton model repository: REPO/MODEL/VERSION/model.EXT, signed.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Promoted model name (default: the registry's, else the output's name).")] = None,
    version: Annotated[Optional[str], typer.Option(help="Promoted version (default: the registry's, else 1).")] = None,
    trust: TrustOption = None,
    target: TargetOption = None,
    json_out: JsonOption = None,
) -> None:
    """Approve a verified repair log with a reviewer key: a signed decision in the registry's transparency log.
    LOG may be an MLflow URI (models:/NAME/VERSION, $MLFLOW_TRACKING_URI); then --promote @ALIAS."""
    from convrepair.ledger.decide import decide

    if _remote_decision(log_file, key, "approved", comment, trust, promote, json_out, target):
        return

    trust_path, trusted = _trusted(trust, log_file)
    plans = []

    def plan(verified):
        from convrepair.ledger.promote import plan as make_plan

        plans.append(make_plan(log_file, promote, key, model, version, verified=verified))
        return plans[-1]

    record, _ = decide(log_file, key, "approved", comment, trusted, plan if promote is not None else None, trust=trust_path)
    promoted = plans[0] if plans else None
    next_verify = (f"convrepair verify {promoted.destination} --trust {_shown(trust_path)} --require-approval"
                   if promoted else None)
    emit_json(json_out, {"decision": "approved", "log": str(log_file), "record": str(record.path), "index": record.sequence,
                         "promoted": str(promoted.destination) if promoted else None,
                         "promoted_log": str(promoted.promoted_log) if promoted else None, "verify": next_verify})
    say(f"approved: {log_file} (decision {record.sequence} in {record.path.parent.parent})"
        + (f"\npromoted to {promoted.destination} ({promoted.model} version {promoted.version})"
           f"\n  log:  {promoted.promoted_log}\nnext: {next_verify}" if promoted else ""), json_out)
    if promoted is None:
        from convrepair.cli.hints import after_approve

        after_approve(log_file, _shown(trust_path) if trust_path else None, json_out)


@app.command()
def reject(
    log_file: LogArgument,
    key: Annotated[Path, typer.Option(help="Reviewer's private key.")],
    reason: Annotated[str, typer.Option(help="Why it is rejected.")],
    trust: TrustOption = None,
    target: TargetOption = None,
    json_out: JsonOption = None,
) -> None:
    """Reject a verified repair log with a reviewer key (LOG may be an MLflow URI, models:/NAME/VERSION)."""
    from convrepair.ledger.decide import decide

    if _remote_decision(log_file, key, "rejected", reason, trust, None, json_out, target):
        return

    trust_path, trusted = _trusted(trust, log_file)
    record, _ = decide(log_file, key, "rejected", reason, trusted, trust=trust_path)
    emit_json(json_out, {"decision": "rejected", "log": str(log_file), "record": str(record.path), "index": record.sequence})
    say(f"rejected: {log_file} (decision {record.sequence} in {record.path.parent.parent})", json_out)


@app.command()
def verify(
    log_file: Annotated[Path, typer.Argument(metavar="LOG", help="The signed repair log, or a promoted version folder.")],
    trust: Annotated[Path, typer.Option(help="Trust file naming the allowed keys and their roles.")],
    require_approval: Annotated[bool, typer.Option("--require-approval", help="Fail unless a trusted reviewer approved this exact log.")] = False,
    chain: Annotated[bool, typer.Option("--chain", help="Also check the whole decision hash chain.")] = False,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", metavar="FILE", help="Pinned checkpoint: the log must extend it (consistency proof); "
        "advanced to the current one when all holds, created on first use. Keep it where the registry's "
        "writers cannot write; without it a rollback of the whole decision store is not caught.")] = None,
    target: TargetOption = None,
    json_out: JsonOption = None,
) -> None:
    """Recompute every digest and check every signature; exit 0 only when all holds (fails closed)."""
    from convrepair.ledger.keys import read_trust
    from convrepair.ledger.verify import verify as run_verify

    remote, uri = _remote(log_file, target)  # models:/NAME@approved: download what is served, verify that
    if remote is not None:
        pin = {"pinned": checkpoint} if checkpoint is not None else {}  # a pin is never dropped silently
        result = remote.verify_log(uri, trust, require_approval, chain, **pin)
    else:
        result = run_verify(log_file, read_trust(trust), require_approval, chain, checkpoint, trust=trust)
    emit_json(json_out, result.to_json())
    if not state["quiet"]:
        for warning in getattr(result, "warnings", []):
            typer.echo(f"note: {warning}", err=True)
    if human(json_out):
        where = ""
        if result.ok and result.checkpoint:
            included = f"decision {result.inclusion['index']} included, " if result.inclusion else ""
            where = f" ({result.status}; {included}checkpoint of {result.checkpoint['size']} decision(s))"
        typer.echo(("verified: " if result.ok else "VERIFICATION FAILED: ") + f"{log_file}: {result.reason}{where}")
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def review(
    registry: Annotated[Path, typer.Option(help="Directory to search for signed logs, or an MLflow model (models:/NAME).")] = Path("."),
    status: Annotated[str, typer.Option(help="pending | approved | rejected | invalid | all")] = "all",
    html: Annotated[Optional[Path], typer.Option(help="Also write an HTML index of the logs, with a review page per log.")] = None,
    trust: TrustOption = None,
    json_out: JsonOption = None,
) -> None:
    """List repair logs and their review status, each verified first (a forged one is `invalid`)."""
    import contextlib

    from convrepair.ledger.review import list_logs
    from convrepair.report.terminal import render_review

    if status not in ("pending", "approved", "rejected", "invalid", "all"):
        raise typer.BadParameter("--status is pending, approved, rejected, invalid or all")
    remote, uri = _remote(registry, None)
    if remote is not None:
        trust_path = _remote_trust(trust)
        found = remote.list_logs(uri, trust_path)

        def local(row):
            return remote.open_log(row["log"], trust_path)
    else:
        trust_path, trusted = _trusted(trust, registry)
        found = list_logs(registry, trusted, trust_path)

        def local(row):
            return contextlib.nullcontext(Path(row["log"]))
    rows = [row for row in found if status == "all" or row["status"] == status]
    emit_json(json_out, rows)
    if human(json_out):
        render_review(rows, status)
    if html is not None:
        _write_index(rows, status, uri if remote is not None else registry, html, trust_path, local, remote is None)
        say(f"wrote {html} and a page per log in {_pages_dir(html)}/", json_out)


def _pages_dir(html: Path) -> Path:
    return html.parent / f"{html.stem}-pages"


def _write_index(rows: list[dict], status: str, registry, html: Path, trust_path: Path, local, relative: bool) -> None:
    """The index and one review page per verified log beside it; every link relative to the index.
    LOCAL(row) is a context manager giving the row's log as a local file."""
    import os
    import re

    from convrepair.fsutil import atomic_output
    from convrepair.ledger.dsse import read_envelope, statement_of
    from convrepair.report.html import log_page, review_page

    pages = _pages_dir(html)
    pages.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if row["status"] == "invalid":
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", row["path"]).strip("_") or "log"
        page = pages / f"{name}.html"
        with local(row) as log, atomic_output(page) as tmp:
            envelope, _ = read_envelope(log)
            tmp.write_text(log_page(statement_of(envelope, log), envelope, log,
                                    verified=f"all checks hold (listed by `convrepair review`; trust {trust_path})"))
        row["page"] = os.path.relpath(page, html.parent)
    shown = [dict(row, path=os.path.relpath(row["log"], html.parent)) for row in rows] if relative else rows
    root = os.path.relpath(registry, html.parent) if relative else str(registry)
    with atomic_output(html) as tmp:
        tmp.write_text(review_page(shown, status, root))


@app.command()
def show(
    log_file: LogArgument,
    html: Annotated[Optional[Path], typer.Option(help="Also write a self-contained HTML page.")] = None,
    trust: TrustOption = None,
    target: TargetOption = None,
    json_out: JsonOption = None,
) -> None:
    """What changed, where and why, with the numbers before and after (of a log that verifies).
    LOG may be an MLflow URI (models:/NAME/VERSION[/TARGET], models:/NAME@ALIAS)."""
    remote, uri = _remote(log_file, target)
    if remote is not None:
        trust_path = _remote_trust(trust)
        with remote.open_log(uri, trust_path) as local:
            _show(local, html, trust_path, json_out, uri)
        return
    _show(log_file, html, trust, json_out, None)


def _show(log_file: Path, html: Path | None, trust: Path | None, json_out, shown_as: str | None) -> None:
    from convrepair.ledger.decisions import Unverified
    from convrepair.ledger.dsse import read_envelope, statement_of
    from convrepair.ledger.verify import verify as run_verify
    from convrepair.report.terminal import render_log

    trust_path, trusted = _trusted(trust, log_file)
    checked = run_verify(log_file, trusted, trust=trust_path)
    if not checked.ok:
        raise Unverified(f"not shown, it does not verify: {checked.reason}", shown_as or log_file)
    log_file = Path(checked.log)
    envelope, _ = read_envelope(log_file)
    statement = statement_of(envelope, log_file)
    emit_json(json_out, statement)
    if human(json_out):
        render_log(statement, envelope)
    if html is not None:
        from convrepair.fsutil import atomic_output
        from convrepair.report.html import log_page

        with atomic_output(html) as tmp:
            tmp.write_text(log_page(statement, envelope, log_file, verified=f"all {len(checked.checks)} checks hold "
                                    f"(signatures, file digests, decisions; trust {trust_path})"))
        say(f"wrote {html}", json_out)
