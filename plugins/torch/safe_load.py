"""Load PyTorch model files without running code they brought.

`torch.export.load` unpickles some archive members with `weights_only=False` (and falls back to
it when the safe unpickler refuses). While it runs we force every `torch.load` to
`weights_only=True` and refuse the plain-pickle paths, so a crafted archive fails to load instead
of executing. TorchScript is loaded with `torch.jit.load`, whose unpickler only builds TorchScript
types and whose code is TorchScript, not Python.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput, UnsafeModel, exception_text


class _RefusedPickle:
    """Stands in for the `pickle` module inside torch's archive reader."""

    @staticmethod
    def loads(*_args: Any, **_kwargs: Any) -> Any:
        raise UnsafeModel("archive holds an opaque pickled object; refusing to unpickle it")

    load = loads


@contextlib.contextmanager
def _weights_only_torch_load():
    import torch
    from torch.export.pt2_archive import _package

    original_load = torch.load
    original_pickle = _package.pickle
    original_obj = torch._C._pickle_load_obj

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    def refuse_obj(*_args: Any, **_kwargs: Any) -> Any:
        raise UnsafeModel("archive holds a pickled custom object; refusing to unpickle it")

    torch.load = safe_load
    _package.pickle = _RefusedPickle
    torch._C._pickle_load_obj = refuse_obj
    try:
        yield
    finally:
        torch.load = original_load
        _package.pickle = original_pickle
        torch._C._pickle_load_obj = original_obj


@contextlib.contextmanager
def _export_log_quiet():
    """torch.export.load logs a whole traceback before it raises "check the warnings above" on a bad
    archive: keep the logged errors (yielded) for our one line, print nothing."""
    import logging

    logged: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:
                logged.append(exception_text(record.exc_info[1], 200))

    logger = logging.getLogger("torch.export")
    handlers, propagate = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [_Keep()], False
    try:
        yield logged
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def load_exported_program(path: Path):
    import torch

    from convrepair.contain.archive import check_zip

    check_zip(path, ".pt2 archive")  # bounded before torch reads a member
    logged: list[str] = []
    try:
        with _weights_only_torch_load(), _export_log_quiet() as logged:
            return torch.export.load(str(path))
    except UnsafeModel as exc:
        raise UnsafeModel(exc.message, path) from None
    except Exception as exc:  # noqa: BLE001
        text = exception_text(exc, 200)
        if "warnings above" in text and logged:
            text = logged[-1]
        if "weights_only" in text or "Unsupported global" in text:
            raise UnsafeModel(f"refusing to load: it needs unsafe unpickling ({text})", path) from None
        raise BadInput(f"is not a loadable torch.export program (.pt2): {text}", path) from None


def load_torchscript(path: Path):
    """Return (module, declared input specs or None)."""
    import torch

    from convrepair.contain import guard_code_format
    from convrepair_plugins.torch.scan import scan_archive, scan_module

    guard_code_format("torchscript", path)
    scan_archive(path)  # loading runs __setstate__: refuse before that
    extra = {"convrepair_inputs.json": ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        text = exception_text(exc, 200)
        raise BadInput(f"is not a loadable TorchScript archive: {text}", path) from None
    scan_module(module, path)
    declared = None
    if extra["convrepair_inputs.json"]:
        try:
            declared = json.loads(extra["convrepair_inputs.json"])["inputs"]
        except (ValueError, KeyError, TypeError):
            declared = None
    return module.eval(), declared
