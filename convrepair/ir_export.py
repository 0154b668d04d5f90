"""A model's conversion (the ONNX IR localization walks, or the daemon's own conversion) run in a
process of its own that ends when it is done, so the converter's peak never adds to the peak of
the process that checks: tf2onnx holds 4–5 GB while it exports a Keras ResNet50, and a process's
memory, once grown, stays grown; a child's is returned whole when it exits.

Where the child is: checks and repairs run in a contained worker, and no child of that worker
can run a framework — Landlock grants the worker no right to execute the interpreter, and a fork
of it cannot read its own /proc entry (only the worker's pid is granted), which TensorFlow
aborts on (`env.cc: Check failed: -1 != fd`). So the export is made *before* the check's worker
starts, in a contained worker of its own (`export_ahead`, called by whoever starts the check's
worker: the daemon's job, the CLI), and kept in the IR cache, which the check's worker then
only reads: the export's peak has come and gone before any model of the check is loaded.
Inside a worker, an IR nobody exported ahead is exported in the worker itself, as it always
was, and says so (`ExportResult.where`); an uncontained caller (a library, a benchmark) gets a
fresh interpreter (`python -m convrepair.ir_export REQUEST.json`).

tf2onnx deep-copies the whole graph before each optimizer pass so that a failing optimizer can
be skipped. Its switch is the environment variable TF2ONNX_CATCH_ERRORS, of which tf2onnx
compares the *name* with "TRUE" (tf2onnx/convert.py: `ENV_TF2ONNX_CATCH_ERRORS.upper() == "TRUE"`):
set to anything, the copies are off. The export sets it (`lean`): the same graph, byte for byte,
at a lower peak (bench/ir_export_bench.py); an optimizer that fails then fails the export instead
of being skipped, so a failed lean export is tried once more with the copies, as tf2onnx would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convrepair import ircache
from convrepair.errors import BadInput, ConversionFailed, ConvrepairError, PluginUnavailable, UnsafeModel

if TYPE_CHECKING:
    from convrepair.plugins import PluginRegistry

LEAN_ENV = "TF2ONNX_CATCH_ERRORS"
_ERRORS = {cls.__name__: cls for cls in (BadInput, UnsafeModel, PluginUnavailable, ConversionFailed, ConvrepairError)}


@dataclass
class ExportResult:
    output: Path  # the converted model (its sidecar beside it)
    route: list[str]
    steps: list[dict[str, Any]]
    where: str  # "child process" | "in process" (a contained worker's own, made for it)
    lean: bool  # tf2onnx ran without its per-optimizer copies
    files: list[str] = field(default_factory=list)  # the output's files, names relative to its folder


@dataclass
class Ahead:
    """What `export_ahead` leaves for the check's worker: the cache to read (`ircache.use` there)
    and the folders to grant it read access to (the source's entry, nothing of other models)."""

    cache: Path | None
    reads: list[Path]
    how: str  # "cached", "contained worker", "as is", or why there is none ("no route …", "failed: …")


def export_ahead(registry: PluginRegistry, source: Path, options: dict | None = None, *,
                 cache: Path | str | None = "default", trust_code: bool = False, memory_mb: int | None = None,
                 export: bool = True, known: tuple | None = None) -> Ahead:
    """In the process that starts a check's worker, before it does: the source's IR in the cache,
    exported (on a miss, when `export`; else only a hit is granted) in a contained worker of its
    own that ends with it. The worker writes only a folder of ours; this process hashes the source
    itself and keeps the file under the key it computed, so no worker can place an IR under
    another model's key. An export that fails is no failure here: the check's localization says
    what it could not do."""
    import shutil
    import tempfile

    from convrepair.contain import DEFAULT_MEMORY_MB
    from convrepair.contain.worker import run_contained
    from convrepair.model import model_ref
    from convrepair.sidecar import read_sidecar

    root = ircache.cache_dir() if cache == "default" else (None if cache in (None, "off") else Path(cache))
    # `known`: the (ModelRef, sidecar) the caller already has (broker.ask hashed the source): not twice
    ref, sidecar = known if known is not None else (model_ref(Path(source), registry), None)
    if ref.format == "onnx":
        return Ahead(root, [], "as is")
    sidecar = sidecar or read_sidecar(ref.path) or registry.implied_sidecar(ref)
    key = ircache.key_for(registry, ref, sidecar, options)
    if key is None or root is None:
        return Ahead(root, [], f"no route from {ref.format} to ONNX" if key is None else "no cache")
    if ircache.lookup(root, key) is not None:
        return Ahead(root, [root / key], "cached")
    if not export:
        return Ahead(root, [], "not cached")
    stage = Path(tempfile.mkdtemp(prefix="convrepair-ir-"))
    try:
        request = {"source": str(ref.path), "format": ref.format, "target": "onnx", "out": str(stage / "ir.onnx"),
                   "options": dict(options or {}), "lean": True}
        try:
            answer, _ = run_contained(_export_task, request, reads=[ref.path], writes=[stage], trust_code=trust_code,
                                      memory_mb=DEFAULT_MEMORY_MB if memory_mb is None else memory_mb)
        except ConvrepairError as exc:
            return Ahead(root, [], f"failed: {exc.one_line()}")
        names = [name for name in answer.get("files", []) if ircache.plain_name(name) and (stage / name).is_file()]
        if "ir.onnx" not in names:
            return Ahead(root, [], "failed: the export wrote no ir.onnx")
        meta = {"route": answer.get("route", []), "where": "contained worker", "lean": bool(answer.get("lean"))}
        if ircache.store(root, key, [stage / name for name in names], stage / "ir.onnx", meta) is None:
            return Ahead(root, [], "not kept: the cache cannot be written")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Ahead(root, [root / key], "contained worker")


def _export_task(_send, request: dict[str, Any]) -> dict[str, Any]:
    return run_export(request)


def convert_in_child(source: Path, target: str, out: Path | None = None, *, fmt: str | None = None,
                     options: dict | None = None, out_dir: Path | None = None, calibration: Path | None = None,
                     lean: bool = True) -> ExportResult:
    """`convert.convert(source → target)` in a process that ends with it where one can run a
    framework (uncontained: a fresh interpreter), else here (see the module's text)."""
    import tempfile

    from convrepair import contain

    with tempfile.TemporaryDirectory(prefix="convrepair-export-") as talk:
        request = {"source": str(source), "format": fmt, "target": target, "out": str(out) if out else None,
                   "out_dir": str(out_dir) if out_dir else None, "options": dict(options or {}),
                   "calibration": str(calibration) if calibration else None, "lean": lean,
                   "result": str(Path(talk) / "result.json")}
        confined = contain.current() is not None and contain.current().in_force
        if not confined:
            (Path(talk) / "request.json").write_text(json.dumps(request))
            try:
                done = subprocess.run([sys.executable, "-P", "-m", "convrepair.ir_export", str(Path(talk) / "request.json")],
                                      env=_child_env(), check=False)
                return _read_result(request, _as_wait_status(done.returncode), "child process", Path(source))
            except PermissionError:  # no right to start an interpreter here
                pass
        _export_to_file(request)
        return _read_result(request, 0, "in process", Path(source))


def run_export(request: dict[str, Any]) -> dict[str, Any]:
    """The conversion itself (in the child): JSON-able facts about what it wrote."""
    from convrepair.convert import convert, load_calibration
    from convrepair.model import model_ref
    from convrepair.plugins import default_registry

    registry = default_registry()
    ref = model_ref(Path(request["source"]), registry, request.get("format"))
    calibration = load_calibration(Path(request["calibration"])) if request.get("calibration") else None
    out = Path(request["out"]) if request.get("out") else None
    out_dir = Path(request["out_dir"]) if request.get("out_dir") else None

    def attempt():
        return convert(registry, ref, request["target"], out, request.get("options") or {}, calibration, out_dir=out_dir)

    lean = bool(request.get("lean"))
    if lean:
        os.environ[LEAN_ENV] = "off"  # any value: tf2onnx compares the variable's name with "TRUE"
    try:
        result = attempt()
    except ConversionFailed:
        if not lean:
            raise
        os.environ.pop(LEAN_ENV, None)  # tf2onnx skips an optimizer that fails only with its copies
        lean = False
        result = attempt()
    finally:
        os.environ.pop(LEAN_ENV, None)
    output = result.output.path
    files = sorted(p.name for p in output.parent.iterdir()  # the model and its external data, not its sidecar
                   if p.is_file() and p.name.startswith(output.name) and not p.name.endswith(".convrepair.json")) \
        if output.is_file() else []
    return {"output": str(output), "route": result.route, "steps": [dict(step.__dict__) for step in result.steps],
            "lean": lean, "files": files}


def _child_env() -> dict[str, str]:
    """This process's environment; the lean switch is the child's to set (`run_export`)."""
    env = dict(os.environ)
    env.pop(LEAN_ENV, None)
    return env


def _export_to_file(request: dict[str, Any]) -> None:
    """Run the export; its result, or the error it raised, as JSON in `request["result"]`."""
    from convrepair.fsutil import write_json_atomic

    try:
        answer: dict[str, Any] = {"ok": run_export(request)}
    except ConvrepairError as exc:
        answer = {"error": {"kind": type(exc).__name__, "message": exc.message, "path": str(exc.path) if exc.path else None}}
    except Exception as exc:  # noqa: BLE001 - the parent names it
        from convrepair.errors import exception_text

        answer = {"error": {"kind": "ConversionFailed", "message": f"{type(exc).__name__}: {exception_text(exc, 300)}",
                            "path": request["source"]}}
    write_json_atomic(Path(request["result"]), answer)


def _as_wait_status(returncode: int) -> int:
    """subprocess's return code (−N for signal N) as os.wait's status, to read both alike."""
    return (-returncode & 0x7F) if returncode < 0 else (returncode & 0xFF) << 8


def _read_result(request: dict[str, Any], status: int, where: str, source: Path) -> ExportResult:
    import signal

    path = Path(request["result"])
    answer = json.loads(path.read_text()) if path.is_file() else None
    if answer and "ok" in answer:
        ok = answer["ok"]
        return ExportResult(Path(ok["output"]), ok["route"], ok["steps"], where, ok["lean"], ok["files"])
    if answer and "error" in answer:
        error = answer["error"]
        raise _ERRORS.get(error.get("kind"), BadInput)(error.get("message", ""), error.get("path"))
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        raise BadInput(f"the conversion to {request['target']} was killed by {name} (out of memory, or past the "
                       "worker's memory limit --memory-mb)", source)
    raise ConversionFailed(f"the conversion to {request['target']} ended (status {status}) without a result", source)


def main(argv: list[str] | None = None) -> int:
    """`python -m convrepair.ir_export REQUEST.json`: one conversion, its result in the request's file."""
    argv = sys.argv[1:] if argv is None else argv
    _export_to_file(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
