"""Errors a user can act on: which file, what is wrong. Each carries its CLI exit status."""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_DISCREPANT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70  # a bug: in convrepair, or in a converter it runs


def exception_text(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to `limit`; its type name when it has no message."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


class ConvrepairError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{self.path}: {text}" if self.path is not None else text


class BadInput(ConvrepairError):
    """A model, data or config file that cannot be used as given."""


class UnsafeModel(BadInput):
    """A model file whose loading could run code it brought (e.g. a plain pickle)."""


class PluginUnavailable(ConvrepairError):
    """The framework a plugin needs is missing or broken on this machine."""


class ConversionFailed(ConvrepairError):
    """A converter crashed (raised something other than a `ConvrepairError`): a bug in the
    converter or in our plugin around it, exit 70 with its cause. A converter that refuses an
    input raises `BadInput` with its reason instead (exit 2)."""

    exit_code = EXIT_INTERNAL
