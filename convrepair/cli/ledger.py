"""Signed repair logs: `keys init`, `approve`, `reject`, `verify`, `review`, `show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.cli.app import app
from convrepair.cli.common import JsonOption, emit_json, human, say

keys_app = typer.Typer(help="Signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

LogArgument = Annotated[Path, typer.Argument(metavar="LOG", help="The signed repair log.")]


@keys_app.command("init")
def keys_init(
    name: Annotated[str, typer.Option(help="Key name: NAME.key (private, 0600) and NAME.pub.")] = "convrepair",
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the key pair.")] = Path("."),
    trust: Annotated[Optional[Path], typer.Option(help="Also add the public key to this trust file …")] = None,
    role: Annotated[str, typer.Option(help="… with this role: service or reviewer.")] = "service",
    json_out: JsonOption = None,
) -> None:
    """Create an Ed25519 key pair; never overwrites. The private key is never printed."""
    from convrepair.ledger.keys import add_to_trust, init_keys, load_public_key

    private, public, keyid = init_keys(name, directory)
    if trust is not None:
        add_to_trust(trust, load_public_key(public), role, name)
    emit_json(json_out, {"name": name, "keyid": keyid, "private": str(private), "public": str(public),
                         "trust": str(trust) if trust else None, "role": role if trust else None})
    say(f"key {name}: {keyid}\n  private: {private} (mode 600)\n  public:  {public}", json_out)


@app.command()
def approve(
    log_file: LogArgument,
    key: Annotated[Path, typer.Option(help="Reviewer's private key (not the key that signed the log).")],
    comment: Annotated[str, typer.Option(help="Why it is approved.")] = "",
    promote: Annotated[Optional[Path], typer.Option(help="Copy the approved artifact, its log and the approval here.")] = None,
    json_out: JsonOption = None,
) -> None:
    """Approve a repair log with a reviewer key (a second signed statement)."""
    from convrepair.ledger.decisions import decide

    record = decide(log_file, key, "approved", comment, promote)
    emit_json(json_out, {"decision": "approved", "log": str(log_file), "record": str(record.path),
                         "promoted": str(promote) if promote else None})
    say(f"approved: {record.path}" + (f"\npromoted to {promote}" if promote else ""), json_out)


@app.command()
def reject(
    log_file: LogArgument,
    key: Annotated[Path, typer.Option(help="Reviewer's private key.")],
    reason: Annotated[str, typer.Option(help="Why it is rejected.")],
    json_out: JsonOption = None,
) -> None:
    """Reject a repair log with a reviewer key."""
    from convrepair.ledger.decisions import decide

    record = decide(log_file, key, "rejected", reason)
    emit_json(json_out, {"decision": "rejected", "log": str(log_file), "record": str(record.path)})
    say(f"rejected: {record.path}", json_out)


@app.command()
def verify(
    log_file: LogArgument,
    trust: Annotated[Path, typer.Option(help="Trust file naming the allowed keys and their roles.")],
    require_approval: Annotated[bool, typer.Option("--require-approval", help="Fail unless a trusted reviewer approved this exact log.")] = False,
    chain: Annotated[bool, typer.Option("--chain", help="Also check the whole decision hash chain.")] = False,
    json_out: JsonOption = None,
) -> None:
    """Recompute every digest and check every signature; exit 0 only when all holds (fails closed)."""
    from convrepair.ledger.keys import read_trust
    from convrepair.ledger.verify import verify as run_verify

    result = run_verify(log_file, read_trust(trust), require_approval, chain)
    emit_json(json_out, result.to_json())
    if human(json_out):
        typer.echo(("verified: " if result.ok else "VERIFICATION FAILED: ") + f"{log_file}: {result.reason}")
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def review(
    registry: Annotated[Path, typer.Option(help="Directory to search for signed logs.")] = Path("."),
    status: Annotated[str, typer.Option(help="pending | approved | rejected | all")] = "pending",
    json_out: JsonOption = None,
) -> None:
    """List repair logs and their review status."""
    from convrepair.ledger.review import list_logs
    from convrepair.report.terminal import render_review

    if status not in ("pending", "approved", "rejected", "all"):
        raise typer.BadParameter("--status is pending, approved, rejected or all")
    rows = [row for row in list_logs(registry) if status == "all" or row["status"] == status]
    emit_json(json_out, rows)
    if human(json_out):
        render_review(rows, status)


@app.command()
def show(
    log_file: LogArgument,
    html: Annotated[Optional[Path], typer.Option(help="Also write a self-contained HTML page.")] = None,
    json_out: JsonOption = None,
) -> None:
    """What changed, where and why, with the numbers before and after."""
    from convrepair.ledger.dsse import read_envelope, statement_of
    from convrepair.report.terminal import render_log

    envelope, _ = read_envelope(log_file)
    statement = statement_of(envelope, log_file)
    emit_json(json_out, statement)
    if human(json_out):
        render_log(statement, envelope)
    if html is not None:
        from convrepair.fsutil import atomic_output
        from convrepair.report.html import log_page

        with atomic_output(html) as tmp:
            tmp.write_text(log_page(statement, envelope))
        say(f"wrote {html}", json_out)
