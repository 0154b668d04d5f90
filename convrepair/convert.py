"""`convrepair convert`: find a path over the converter graph, run it, write output and sidecar."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput, ConversionFailed, ConvrepairError, exception_text
from convrepair.fsutil import atomic_output, combined_digest, file_digests
from convrepair.model import ModelRef, model_ref
from convrepair.plugins import ConvertRequest, ConverterSpec, PluginRegistry
from convrepair.sidecar import ConversionStep, Sidecar, read_sidecar, write_sidecar


@dataclass
class ConversionResult:
    source: ModelRef
    output: ModelRef
    target: str
    route: list[str]
    steps: list[ConversionStep]
    seconds: float
    sidecar: Path
    sizes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "convrepair.convert/v1",
            "source": self.source.to_json(),
            "output": self.output.to_json(),
            "target": self.target,
            "route": self.route,
            "seconds": round(self.seconds, 3),
            "sidecar": str(self.sidecar),
            "sizes": self.sizes,
            "steps": [step.__dict__ for step in self.steps],
        }


def plan_route(registry: PluginRegistry, source_format: str, target: str) -> list[ConverterSpec]:
    """Shortest chain of available converters from `source_format` to `target` (breadth first).

    Intermediate hops only use lossless format conversions: a path never quantizes on the way.
    """
    usable = [
        conv
        for conv in registry.converters.values()
        if registry.plugin(conv.plugin).unavailable_reason() is None
    ]
    writable = sorted({conv.target for conv in registry.converters.values()})
    if target not in writable:
        what = f"'{target}' is a model format no converter writes" if target in registry.formats else f"unknown conversion target '{target}'"
        raise BadInput(f"{what}; conversion targets: {', '.join(writable)}")
    queue: deque[tuple[str, list[ConverterSpec]]] = deque([(source_format, [])])
    seen = {source_format}
    while queue:
        fmt, route = queue.popleft()
        for conv in sorted(usable, key=lambda c: c.name):
            if fmt not in conv.sources:
                continue
            if conv.target == target:
                return [*route, conv]
            if conv.lossy or conv.output_format in seen:
                continue
            seen.add(conv.output_format)
            queue.append((conv.output_format, [*route, conv]))
    raise BadInput(f"no available converter path from '{source_format}' to '{target}' (see `convrepair plugins`)")


def default_output(registry: PluginRegistry, source: Path, route: list[ConverterSpec], original: str | None = None) -> Path:
    last = route[-1]
    suffix = registry.formats[last.output_format].suffix
    stem = source.name.split(".")[0]
    tag = f".{last.target}" if last.lossy else ""
    out = source.with_name(f"{stem}{tag}{suffix}")
    if out.resolve() == source.resolve() or (original and out.name == Path(original).name):
        # never the source, nor the original a converted source came from (model.onnx -> model.pt2)
        out = source.with_name(f"{stem}.{last.target}{suffix}")
    return out


def convert(
    registry: PluginRegistry,
    source_path: Path | ModelRef,
    target: str,
    out: Path | None = None,
    options: dict[str, Any] | None = None,
    calibration: dict | None = None,
    out_dir: Path | None = None,
    force: bool = True,
    data: Path | None = None,
) -> ConversionResult:
    """Convert along the planned route; the sidecar records the input range measured on `data`
    (the float inputs' min/max), else (no data, or integer inputs only) the one the source's
    sidecar records, else none."""
    # a ModelRef a job already resolved and hashed is taken as is
    source = source_path if isinstance(source_path, ModelRef) else model_ref(source_path, registry)
    source_sidecar = read_sidecar(source.path) or registry.implied_sidecar(source) or Sidecar()  # a sidecar-less int8 .tflite stays int8
    route = plan_route(registry, source.format, target)
    chosen_by_user = out is not None
    original = (source_sidecar.source or {}).get("path")
    out = Path(out) if chosen_by_user else default_output(registry, source.path, route, original)
    if out_dir is not None and not chosen_by_user:
        out = Path(out_dir) / out.name
    if out.resolve() == source.path.resolve():
        raise BadInput("output path is the source model itself; choose another --out", out)
    if not force and out.exists():
        raise BadInput("already exists; pass --force to overwrite it", out)
    options = dict(options or {})
    if not source_sidecar.input_layout:
        with registry.load(source, source_sidecar, device="cpu") as runner:
            source_sidecar.input_layout = [spec.layout for spec in runner.inputs]

    measured = measured_input_range(data) if data is not None else None
    if measured is not None:  # measured on the user's data, replacing anything recorded before
        source_sidecar.preprocessing = replace(source_sidecar.preprocessing, input_range=measured)

    started = time.perf_counter()
    steps: list[ConversionStep] = []
    work = Path(tempfile.mkdtemp(prefix="convrepair-convert-"))
    try:
        current, current_sidecar = source, source_sidecar
        for index, conv in enumerate(route):
            fmt = registry.formats[conv.output_format]
            step_out = work / f"step{index}" / f"model{fmt.suffix}"
            step_out.parent.mkdir(parents=True)
            request = ConvertRequest(current, step_out, options, current_sidecar, calibration)
            t0 = time.perf_counter()
            try:
                notes = conv.convert(request)
            except ConvrepairError:
                raise
            except Exception as exc:  # noqa: BLE001 - a converter's failure becomes a clear error
                detail = exception_text(exc, 300)
                hop = f" (step {index + 1} of {len(route)})" if len(route) > 1 else ""
                raise ConversionFailed(
                    f"converter '{conv.name}' ({current.format} -> {conv.target}){hop} failed: "
                    f"{type(exc).__name__}: {detail}",
                    source.path,  # the user's file, not our intermediate
                ) from exc
            written = notes.output or step_out
            step = ConversionStep(
                converter=conv.name,
                tool=notes.tool,
                tool_versions=notes.tool_versions,
                options={k: v for k, v in options.items()},
                source_format=current.format,
                output_format=notes.output_format,
                seconds=round(time.perf_counter() - t0, 3),
                details=notes.details,
            )
            steps.append(step)
            current = model_ref(written, registry, fmt=notes.output_format)
            current_sidecar = Sidecar(
                source=source.to_json(),
                steps=[*source_sidecar.steps, *steps],
                input_layout=notes.input_layout or list(current_sidecar.input_layout),
                preprocessing=current_sidecar.preprocessing,
                precision=notes.precision or current_sidecar.precision,
                labels=current_sidecar.labels,
            )
        if not chosen_by_user and current.format != route[-1].output_format:
            out = out.with_suffix(registry.formats[current.format].suffix)  # converter fell back
        with atomic_output(out) as tmp:
            _move(current.path, tmp)
        try:  # an output is kept only with its sidecar (and calibration): all or nothing
            output = ModelRef(out, current.format, combined_digest(file_digests(out)), file_digests(out))
            if calibration:
                keep_calibration(out, calibration, steps)
            current_sidecar.output = output.to_json()
            if source_sidecar.source:  # a converted model converted again keeps the original source
                current_sidecar.source = source_sidecar.source
            side = write_sidecar(out, current_sidecar)
        except BaseException:
            _remove_output(out)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    return ConversionResult(
        source=source,
        output=output,
        target=target,
        route=[conv.name for conv in route],
        steps=steps,
        seconds=time.perf_counter() - started,
        sidecar=side,
        sizes={"source": _size(source.path), "output": _size(out)},
    )


def measured_input_range(data: Path) -> tuple[float, float] | None:
    """(min, max) over the finite values of a data file's float inputs; None when it has none."""
    from convrepair.data import npz_facts
    from convrepair.judge import overall_range, value_range

    return overall_range(value_range(x) for x in npz_facts(Path(data))[2])


CALIBRATION_SUFFIX = ".calibration.npz"


def keep_calibration(out: Path, calibration: dict, steps: list[ConversionStep]) -> Path | None:
    """Keep the calibration data beside the output, named and hashed in the step that used it:
    a static quantization can only be re-run (the precision fallback of `repair`) with it."""
    import numpy as np

    from convrepair.fsutil import sha256_file

    used = [step for step in steps if "calibration_samples" in step.details]
    if not used:
        return None
    path = out.with_name(out.name + CALIBRATION_SUFFIX)
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **calibration)
    for step in used:
        step.details.update(calibration_file=path.name, calibration_sha256=sha256_file(path))
    return path


def kept_calibration(model_path: Path, step: ConversionStep) -> dict:
    """The calibration data a step kept beside `model_path`; BadInput when missing or changed."""
    from convrepair.fsutil import sha256_file

    name = step.details.get("calibration_file")
    if not name:
        raise BadInput(f"the {step.converter} step was calibrated but its calibration data was not kept "
                       f"(converted before convrepair kept it); convert again with --calibration", model_path)
    path = Path(model_path).with_name(name)
    if not path.is_file():
        raise BadInput(f"the calibration data {name} of this model is missing", model_path)
    if sha256_file(path) != step.details.get("calibration_sha256"):
        raise BadInput(f"the calibration data {name} does not match the sha256 its sidecar recorded", path)
    return load_calibration(path)


def load_calibration(path: Path) -> dict:
    """Calibration inputs: every array of an .npz except labels (`y`)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files if key != "y"}
    except (OSError, ValueError) as exc:
        raise BadInput(f"is not a readable .npz calibration file: {exc}", path) from None


def _remove_output(out: Path) -> None:
    """Take back an output whose sidecar could not be written: no model without its provenance."""
    from convrepair.sidecar import sidecar_path

    for path in (out, sidecar_path(out), out.with_name(out.name + CALIBRATION_SUFFIX)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _move(src: Path, dst: Path) -> None:
    shutil.move(str(src), str(dst))


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size

