"""TensorFlow and Keras print to stdout and stderr while importing and converting; our CLI owns both."""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def stderr_fd_silenced() -> Iterator[None]:
    """Silence file descriptor 2 (C++ logging bypasses Python's sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd (e.g. captured by a test runner)
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


# Packages TensorFlow and Keras import only if installed, for features convrepair never uses (TFLite's
# JAX conversion, Keras's scikit-learn wrappers and image-gallery plots). Each import is guarded by
# `except ImportError` upstream; without them `import tensorflow, keras` took 8.1 s of CPU instead of
# 11.0 s here (median of 3; jax comes with litert-torch), paid by every contained worker that loads
# a Keras model. Imported later by anything else, they load as usual.
OPTIONAL_AT_IMPORT = frozenset({"jax", "jaxlib", "sklearn", "matplotlib"})


class _SkipOptional(importlib.abc.MetaPathFinder):
    """Refuses the optional packages above (those not already imported) while TensorFlow imports,
    as if they were not installed."""

    def __init__(self) -> None:
        self.skipped = OPTIONAL_AT_IMPORT - {name.partition(".")[0] for name in sys.modules}

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.skipped:
            raise ImportError(f"{name} is not imported alongside tensorflow (convrepair does not use it)")
        return None


def import_tensorflow():
    """Import tensorflow (and Keras) once, without its start-up chatter on the terminal and
    without the optional packages it would pull in for features we do not use."""
    if "tensorflow" not in sys.modules:
        skip = _SkipOptional()
        sys.meta_path.insert(0, skip)
        try:
            with stderr_fd_silenced():
                import tensorflow  # noqa: F401
                import keras  # noqa: F401  (TensorFlow imports it lazily; the same cost, once, here)
        finally:
            sys.meta_path.remove(skip)
    return sys.modules["tensorflow"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    import_tensorflow()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
