"""The contained worker's own interpreter (`python -P -m convrepair.contain.child`, exec'd by the
supervisor): read what to run on stdin, confine itself while it is still one thread and has
imported nothing but convrepair's containment code, then unpickle and run the task.

stdin: one JSON line (reads, writes, scratch, the Landlock ABI to use, trust) and the parent's
pickled task. fd 3: the messages back to the parent (JSON lines). Exit 0 with a result sent, 3
when the task failed (the message says why).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_ERROR_KINDS = ("BadInput", "UnsafeModel", "PluginUnavailable", "ConversionFailed", "ConvrepairError")
_DENIED = ("Permission denied", "Operation not permitted")


def main() -> None:
    channel = os.fdopen(3, "wb", buffering=0)
    code = 3
    try:
        code = _run(channel)
    except BaseException as exc:  # noqa: BLE001 - whatever happens, the parent gets one message
        _write(channel, {"error": {"kind": "bug", "message": f"worker: {type(exc).__name__}: {exc}"}})
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _run(channel) -> int:
    with os.fdopen(0, "rb") as stdin:
        data = stdin.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    line, _, pickled = data.partition(b"\n")
    header = json.loads(line)
    try:
        abi = _confine(header)
    except OSError as exc:
        _write(channel, {"error": {"kind": "ContainmentFailed", "message": str(exc)}})
        return 3
    from convrepair import contain

    contain.declare(contain.Containment(abi, True, memory_mb=header["memory_mb"]), header["trust_code"])
    _write(channel, {"contained": {"landlock_abi": abi, "seccomp": True, "pid": os.getpid()}})
    import pickle
    import tempfile

    tempfile.tempdir = header["scratch"]
    task, args = pickle.loads(pickled)  # the parent's own bytes: it trusts us, we trust it
    del data, pickled

    def send(progress: Any) -> None:
        _write(channel, {"progress": progress})

    reply = _call(task, send, args)
    _write(channel, reply)
    return 0 if "result" in reply else 3


def _confine(header: dict) -> int:
    """seccomp, then Landlock; OSError (with the reason) when either cannot be had."""
    from pathlib import Path

    from convrepair.contain import landlock, policy, seccomp

    threads = _threads()
    if threads != 1:
        raise OSError(f"the worker has {threads} threads before confinement; Landlock binds only the calling one")
    rules = policy.grants([Path(p) for p in header["reads"]], [Path(p) for p in header["writes"]])
    seccomp.confine()
    return landlock.restrict(rules, header["landlock_abi"])


def _threads() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("Threads:"))


def _call(task, send, args) -> dict[str, Any]:
    from convrepair.errors import ConvrepairError, exception_text

    try:
        return {"result": task(send, *args)}
    except ConvrepairError as exc:
        if os.environ.get("CONVREPAIR_DEBUG") and exc.__cause__ is not None:  # a converter's crash: its traceback
            import traceback

            traceback.print_exc()
        kind = type(exc).__name__ if type(exc).__name__ in _ERROR_KINDS else "BadInput"
        return {"error": {"kind": kind, "message": exc.message, "path": str(exc.path) if exc.path else None}}
    except MemoryError:
        from convrepair import contain

        limit = contain.current().memory_mb if contain.current() else 0
        return {"error": {"kind": "BadInput", "message": "the models needed more memory than the worker may use"
                          + (f" ({limit} MB; raise --memory-mb)" if limit else "")}}
    except Exception as exc:  # noqa: BLE001 - reported to the parent, never raised
        full = str(exc)
        if any(word in full for word in _DENIED):  # the frameworks' own "errno 13" texts included
            last = [line for line in full.splitlines() if any(word in line for word in _DENIED)][-1]
            return {"error": {"kind": "UnsafeModel", "message": "the sandbox stopped what the model did: "
                              f"{type(exc).__name__}: {' '.join(last.split())[:300]}"}}
        if os.environ.get("CONVREPAIR_DEBUG"):  # the worker's traceback, forwarded to the parent's stderr
            import traceback

            traceback.print_exc()
        return {"error": {"kind": "bug", "message": f"{type(exc).__name__}: {exception_text(exc, 400)}"}}


def _write(channel, message: dict) -> None:
    from convrepair.fsutil import _json_default

    channel.write(json.dumps(message, default=_json_default).encode() + b"\n")


if __name__ == "__main__":
    main()
