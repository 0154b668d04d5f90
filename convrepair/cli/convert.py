"""`convrepair convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.cli.app import app
from convrepair.cli.hints import after_convert
from convrepair.cli.common import JsonOption, MemoryOption, TrustCodeOption, emit_json, human, parse_options, say


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
    trust_model_code: TrustCodeOption = False,
    memory_mb: MemoryOption = 8192,
    json_out: JsonOption = None,
) -> None:
    """Convert SOURCE to one or more targets; multi-hop routes are found automatically.

    Exit 0 converted (and, with --data, every output agrees), 1 an output disagrees, 2 bad input.
    """
    from convrepair import convert as engine
    from convrepair.plugins import default_registry
    from convrepair.report.progress import ForwardingProgress, for_terminal, relay, track, using
    from convrepair.report.terminal import render_conversions
    from convrepair.validate import validate

    if out is not None and len(to) != 1:
        raise typer.BadParameter("--out needs exactly one --to")
    options = parse_options(option)
    if opset is not None:
        options["opset"] = str(opset)
    from convrepair.contain.staging import StagedOutputs
    from convrepair.contain.worker import run_contained

    if out is not None and out.resolve() == Path(source).resolve():
        raise typer.BadParameter(f"{out}: output path is the source model itself; choose another --out")
    calib = engine.load_calibration(calibration) if calibration else None
    with StagedOutputs(force=force) as staged:
        # the worker writes into a hidden stage beside each output; we move what it wrote into place
        staged_out = staged.place(out) if out is not None else None
        staged_dir = staged.folder(out_dir if out_dir is not None else Path(source).absolute().parent) if out is None else None

        def job(send) -> list[dict]:  # runs in the contained worker: every model is loaded there
            registry = default_registry()
            with using(ForwardingProgress(send)):  # the parent shows it (stderr, terminals only)
                results = [engine.convert(registry, source, target, staged_out, options, calib, out_dir=staged_dir,
                                          data=data)
                           for target in track(to, f"converting {Path(source).name}")]
                checks = [validate(registry, result, data) for result in track(results, "validating on the data")] \
                    if data else [None] * len(results)
            return [r.to_json() | ({"validation": c.to_json()} if c else {}) for r, c in zip(results, checks)]

        with using(for_terminal(json_out, quiet=not human(json_out))) as progress:
            conversions, containment = run_contained(job, reads=[source, data], writes=staged.writes(),
                                                     on_message=relay(progress), trust_code=trust_model_code,
                                                     memory_mb=memory_mb)
        staged.publish(expected=_default_outputs(default_registry(), source, to, out_dir) if staged_dir else ())
    payload = {"schema": "convrepair.convert/v1", "conversions": staged.relocate(conversions),
               "containment": containment.to_json()}
    if human(json_out):
        render_conversions(*_views(payload["conversions"]))
        say(containment.summary(), json_out)
    emit_json(json_out, payload)
    failed = any(not c["validation"]["agrees"] for c in payload["conversions"] if "validation" in c)
    written = [c["output"]["path"] for c in payload["conversions"] if (c.get("output") or {}).get("path")]
    if written:  # the last one asked for: the lossiest, in the usual `--to onnx --to onnx-int8`
        after_convert(source, Path(written[-1]), data, json_out)
    raise typer.Exit(1 if failed else 0)


def _default_outputs(registry, source: Path, targets: list[str], out_dir: Path | None) -> list[Path]:
    """Every name a conversion without --out may take ({stem}[.{target}]{suffix}, any known suffix)
    but the source's, chosen here: the worker's report never names what gets published."""
    source = Path(source).absolute()
    final_dir = Path(out_dir).absolute() if out_dir is not None else source.parent
    stem = source.name.split(".")[0]
    suffixes = {fmt.suffix for fmt in registry.formats.values() if fmt.suffix}
    names = [final_dir / f"{stem}{tag}{suffix}" for suffix in suffixes for tag in ("", *(f".{t}" for t in targets))]
    return [name for name in names if name != source]


def _views(conversions: list[dict]) -> tuple[list, list | None]:
    """The conversions' JSON as the attribute views the terminal table reads."""
    from types import SimpleNamespace as View

    results = [View(output=View(path=Path(c["output"]["path"]), format=c["output"]["format"]),
                    source=View(format=c["source"]["format"]), route=c["route"], seconds=c["seconds"], sizes=c["sizes"])
               for c in conversions]
    checks = [View(**c["validation"]) for c in conversions if "validation" in c]
    return results, checks if len(checks) == len(results) else None
