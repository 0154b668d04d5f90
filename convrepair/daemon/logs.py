"""The daemon's log: the same events as one JSON object a line, or as plain `key=value` text.

An event is a log record with `extra={"event": name, **fields}`; `event()` writes one. Records
without an event (a library's warning) keep their message. JSON for a log shipper; text for a
person (`2026-11-25T17:40:01Z info started job=3 model=digits version=1 target=onnx`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

LOGGER = "convrepair.daemon"
FORMATS = ("text", "json")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one daemon event with its fields."""
    logging.getLogger(LOGGER).log(level, name, extra={"event": name, **fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    # a leading underscore is a library's private stamp on every record (Ray adds `_ray_timestamp_ns`)
    return {key: value for key, value in vars(record).items()
            if key not in _STANDARD and key != "event" and not key.startswith("_")}


def _time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _time(record), "level": record.levelname.lower(), "event": getattr(record, "event", None) or "message"}
        if getattr(record, "event", None) is None:
            out["message"] = record.getMessage()
        out.update(_fields(record))
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        head = f"{_time(record)} {record.levelname.lower()} {getattr(record, 'event', None) or record.getMessage()}"
        pairs = " ".join(f"{key}={_text(value)}" for key, value in _fields(record).items() if value is not None)
        line = f"{head} {pairs}" if pairs else head
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ",".join(str(item) for item in value)
    text = str(value)
    return json.dumps(text) if not text or any(ch.isspace() or ch in '"=' for ch in text) else text


def configure(fmt: str = "text", stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send the daemon's log (and warnings of the libraries it uses) to `stream` in `fmt`."""
    if fmt not in FORMATS:
        from convrepair.errors import BadInput

        raise BadInput(f"unknown log format '{fmt}' (use one of: {', '.join(FORMATS)})")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
