"""Wake the daemon when the registry's inputs change — and only then.

inotify reports reads too (IN_OPEN, IN_CLOSE_NOWRITE): a scan that opens `convrepair.toml` would
wake the next scan, forever. So the watch subscribes to changes only (created, modified,
written-and-closed, moved, deleted), and drops those inside convrepair's own results folders,
which the daemon's jobs write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from convrepair.errors import BadInput


def start_watcher(root: Path, poll: bool, poll_seconds: float, wake: Callable[[], None],
                  ignore: Callable[[str], bool]):
    """A started watchdog observer (inotify, or stat polling with `poll`); None without watchdog."""
    try:
        from watchdog import events
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver
    except ImportError:
        return None

    class Wake(events.FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            paths = [event.src_path] + ([event.dest_path] if getattr(event, "dest_path", "") else [])
            if not all(ignore(str(path)) for path in paths):
                wake()

    changes = [events.FileCreatedEvent, events.FileModifiedEvent, events.FileClosedEvent, events.FileMovedEvent,
               events.FileDeletedEvent, events.DirCreatedEvent, events.DirMovedEvent, events.DirDeletedEvent]
    observer = PollingObserver(timeout=poll_seconds) if poll else Observer()
    try:
        observer.schedule(Wake(), str(root), recursive=True, event_filter=changes)
        observer.start()
    except OSError as exc:
        if getattr(exc, "errno", None) == 28:
            raise BadInput("inotify watch limit reached; raise it with `sysctl fs.inotify.max_user_watches=524288` "
                           "or run with --poll", root) from None
        raise
    return observer
