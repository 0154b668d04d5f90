"""ExecuTorch talks on stderr: torchao's optional kernels that do not load, torch's pytree notices,
the runtime's cpuinfo probing (C++, fd 2). Our CLI owns the terminal; errors still come back as
exceptions, which we word ourselves."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    for name in ("torchao", "torch", "executorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), _fd2_silenced():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _fd2_silenced() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd (captured by a test runner)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
