"""`convrepair convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.cli.app import app
from convrepair.cli.common import JsonOption, emit_json, human, parse_options


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="Model to convert (.keras, SavedModel dir, .pt2, .pt, .onnx, .tflite).")],
    to: Annotated[list[str], typer.Option("--to", metavar="TARGET", help="Target: onnx, torch, onnx-fp16, onnx-int8, tflite, tflite-int8. Repeat for several.")],
    out: Annotated[Optional[Path], typer.Option(help="Output path (only with a single --to).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(help="Directory for outputs named after the source (default: beside it).")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset for exporters that write ONNX.")] = None,
    option: Annotated[list[str], typer.Option("--option", "-O", metavar="KEY=VALUE", help="Converter option KEY=VALUE (repeatable).")] = [],  # noqa: B006
    calibration: Annotated[Optional[Path], typer.Option(help=".npz of inputs for static int8 calibration.")] = None,
    data: Annotated[Optional[Path], typer.Option(help=".npz (x, optional y) to validate each output against the source.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite outputs that already exist.")] = False,
    json_out: JsonOption = None,
) -> None:
    """Convert SOURCE to one or more targets; multi-hop routes are found automatically.

    Exit 0 converted (and, with --data, every output agrees), 1 an output disagrees, 2 bad input.
    """
    from convrepair import convert as engine
    from convrepair.plugins import default_registry
    from convrepair.report.terminal import render_conversions

    if out is not None and len(to) != 1:
        raise typer.BadParameter("--out needs exactly one --to")
    options = parse_options(option)
    if opset is not None:
        options["opset"] = str(opset)
    registry = default_registry()
    calib = engine.load_calibration(calibration) if calibration else None
    results = [engine.convert(registry, source, target, out, options, calib, out_dir=out_dir, force=force) for target in to]
    checks = [engine.validate(registry, result, data) for result in results] if data else None
    if human(json_out):
        render_conversions(results, checks)
    payload = [r.to_json() | ({"validation": c.to_json()} if checks else {})
               for r, c in zip(results, checks or [None] * len(results))]
    emit_json(json_out, {"schema": "convrepair.convert/v1", "conversions": payload})
    failed = checks is not None and any(not c.agrees for c in checks)
    raise typer.Exit(1 if failed else 0)
