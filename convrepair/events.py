"""Progress as events: how the engine says what it is doing without knowing who listens.

The engine reports through two calls:

    for layer in track(pairs, "localizing layers"):   # a loop: one line changes
        ...
    with stage("loading models"):                      # a step without a count: a spinner
        ...

Whoever runs the engine decides where the events go: `with using(progress):` around the work —
the CLI renders them on a terminal (`report.progress.RichProgress`), a contained worker forwards
them to its parent as messages (`ForwardingProgress` / `relay`) — or nothing at all: the default
is `NULL`, which does nothing, so the daemon, tests and library callers pay nothing. A `Progress`
is any object with `stage(name, total)` returning a context manager whose value has `advance(n)`.
This module sits below every engine module and imports nothing of convrepair.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol, TypeVar

T = TypeVar("T")


class Step(Protocol):
    def advance(self, n: int = 1) -> None: ...


class Progress(Protocol):
    def stage(self, name: str, total: int | None = None) -> ContextManager[Step]: ...


class _NullStep:
    def advance(self, n: int = 1) -> None:
        pass


class NullProgress:
    """Reports nothing (non-terminals, `--json -`, `-q`, the daemon, library use)."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Step]:
        yield _NullStep()


NULL = NullProgress()


class RecordingProgress:
    """Keeps what was reported: (stage, total, advanced) per stage, in order. For tests and for
    callers that want the timeline rather than a display."""

    def __init__(self):
        self.stages: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Step]:
        record = {"stage": name, "total": total, "advanced": 0}
        self.stages.append(record)

        class _Step:
            def advance(self, n: int = 1) -> None:
                record["advanced"] += n

        yield _Step()


class ForwardingProgress:
    """In a contained worker process: each report becomes a message `{"progress": [...]}` through
    `send`, and the parent's `relay` replays it on the display it holds."""

    def __init__(self, send):
        self.send = send
        self.ids = itertools.count()

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Step]:
        ident = next(self.ids)
        send = self.send
        send({"progress": ["stage", ident, name, total]})

        class _Step:
            def advance(self, n: int = 1) -> None:
                send({"progress": ["advance", ident, n]})

        try:
            yield _Step()
        finally:
            send({"progress": ["end", ident]})


def relay(progress: Progress, other: Callable[[Any], None] | None = None) -> Callable[[Any], None]:
    """The parent's side of ForwardingProgress: an `on_message` that replays progress messages
    on `progress` and hands any other message to `other`."""
    open_stages: dict[int, tuple[ContextManager[Step], Step]] = {}

    def on_message(message: Any) -> None:
        if not (isinstance(message, dict) and "progress" in message):
            if other is not None:
                other(message)
            return
        # the sender ran a model file: take only well-formed reports, and never too many at once
        report = message["progress"]
        if not (isinstance(report, list) and len(report) >= 2 and isinstance(report[1], int)):
            return
        kind, ident, rest = report[0], report[1], report[2:]
        if kind == "stage" and len(rest) == 2 and isinstance(rest[0], str) and (rest[1] is None or isinstance(rest[1], int)) \
                and ident not in open_stages and len(open_stages) < MAX_OPEN_STAGES:
            manager = progress.stage(rest[0][:120], rest[1])
            open_stages[ident] = (manager, manager.__enter__())
        elif kind == "advance" and ident in open_stages and len(rest) == 1 and isinstance(rest[0], int):
            open_stages[ident][1].advance(rest[0])
        elif kind == "end" and ident in open_stages:
            open_stages.pop(ident)[0].__exit__(None, None, None)

    return on_message


MAX_OPEN_STAGES = 16


_current: contextvars.ContextVar[Progress] = contextvars.ContextVar("convrepair_progress", default=NULL)


def current() -> Progress:
    return _current.get()


@contextlib.contextmanager
def using(progress: Progress) -> Iterator[Progress]:
    """Send the engine's progress to `progress` for the duration of the block."""
    token = _current.set(progress)
    try:
        if hasattr(progress, "__enter__"):  # a display that opens and closes (the terminal's)
            with progress:
                yield progress
        else:
            yield progress
    finally:
        _current.reset(token)


def stage(name: str, total: int | None = None) -> ContextManager[Step]:
    """A named stage of the current progress (a no-op unless someone listens)."""
    return _current.get().stage(name, total)


def track(items: Iterable[T], name: str, total: int | None = None) -> Iterator[T]:
    """Iterate `items` as the stage `name`, advancing once per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with stage(name, total) as step:
        for item in items:
            yield item
            step.advance()
