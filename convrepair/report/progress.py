"""Progress on a terminal: the presentation side of `convrepair.events`.

The engine emits stage/advance events (`convrepair.events`); this module renders them for a person
watching a terminal — a transient rich display on stderr — and picks NULL where nobody watches.
The event API is re-exported here for the CLI's convenience.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from convrepair.events import (  # noqa: F401 - re-exported for the CLI
    NULL,
    ForwardingProgress,
    NullProgress,
    Progress,
    RecordingProgress,
    Step,
    current,
    relay,
    stage,
    track,
    using,
)


class RichProgress:
    """A transient rich display on stderr (stdout stays the report): one line per open stage,
    nested stages below their parent, a bar and N/M where the count is known, a spinner where not."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.display = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                console=console or Console(stderr=True), transient=True,
                                # no stdout/stderr proxies: the contained worker is forked while this
                                # runs, and a proxy's lock copied mid-write would hang the child
                                redirect_stdout=False, redirect_stderr=False)
        self.depth = 0

    def __enter__(self) -> RichProgress:
        self.display.start()
        return self

    def __exit__(self, *exc) -> None:
        self.display.stop()

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Step]:
        from rich.markup import escape

        task = self.display.add_task("  " * self.depth + escape(name), total=total)
        self.display.refresh()  # every stage is seen at least once, however short
        display = self.display

        class _Step:
            def advance(self, n: int = 1) -> None:
                display.advance(task, n)

        self.depth += 1
        try:
            yield _Step()
        finally:
            self.depth -= 1
            self.display.remove_task(task)


def for_terminal(json_target: str | None = None, quiet: bool = False) -> Progress:
    """Rich progress when stderr is a terminal and nothing asked for silence; else NULL."""
    if quiet or json_target == "-" or not sys.stderr.isatty():
        return NULL
    return RichProgress()
