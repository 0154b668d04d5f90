"""One contained worker per job: fork, confine the child before any framework is imported, run
the job's engine call there, and bring its result back as JSON.

The parent never unpickles anything from the child (it ran hostile content): the child writes
newline-delimited JSON messages on a pipe — progress (`{"progress": …}`) and at the end either
`{"result": …}` or `{"error": …}`. The child's stdout and stderr are forwarded to the parent's
stderr, so JSON on the parent's stdout stays clean. Where no containment can be had, the task
runs in this process with that fact declared (code-carrying formats are then refused untrusted).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convrepair import contain
from convrepair.contain import Containment
from convrepair.errors import BadInput, ConversionFailed, ConvrepairError, PluginUnavailable, UnsafeModel, exception_text

Send = Callable[[Any], None]
_ERRORS = {cls.__name__: cls for cls in (BadInput, UnsafeModel, PluginUnavailable, ConversionFailed, ConvrepairError)}
_MAX_MESSAGES = 512 * 1024 * 1024  # a child cannot make the parent hold more than this
_DENIED = ("Permission denied", "Operation not permitted")


class WorkerBug(RuntimeError):
    """The contained job failed in a way that is our bug (the CLI reports it as exit 70)."""


def run_contained(task: Callable[..., Any], *args: Any, reads: list[Path], writes: list[Path] = (),
                  on_message: Callable[[Any], None] | None = None, trust_code: bool = False) -> tuple[Any, Containment]:
    """Run `task(send, *args)` confined to reading `reads` and writing `writes`; (result, containment).

    `reads`: the models (with what lies beside them) and data. `writes`: directories the job
    writes; a fresh scratch directory (its TMPDIR) is added and removed afterwards.
    """
    containment = contain.probe()
    if not containment.in_force:
        contain.declare(containment, trust_code)
        return task(on_message or (lambda _message: None), *args), containment
    scratch = Path(tempfile.mkdtemp(prefix="convrepair-job-"))
    try:
        return _fork(task, args, [Path(p) for p in reads if p is not None], [*map(Path, writes), scratch], scratch, on_message,
                     containment, trust_code)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fork(task, args, reads, writes, scratch, on_message, containment, trust_code) -> tuple[Any, Containment]:
    message_r, message_w = os.pipe()
    output_r, output_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the worker: never returns
        os.close(message_r)
        os.close(output_r)
        _child(task, args, reads, writes, scratch, message_w, output_w, containment, trust_code)
    os.close(message_w)
    os.close(output_w)
    try:
        messages = _pump(message_r, output_r, on_message)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(message_r)
        os.close(output_r)
    _, status = os.waitpid(pid, 0)
    return _outcome(messages, status, containment)


def _pump(message_r: int, output_r: int, on_message) -> list[Any]:
    """Read both pipes until the child closes them: progress to `on_message`, output to stderr."""
    selector = selectors.DefaultSelector()
    selector.register(message_r, selectors.EVENT_READ, "message")
    selector.register(output_r, selectors.EVENT_READ, "output")
    pending, final, total = b"", [], 0
    while selector.get_map():
        for key, _ in selector.select():
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                selector.unregister(key.fd)
                continue
            if key.data == "output":
                sys.stderr.buffer.write(chunk) if hasattr(sys.stderr, "buffer") else sys.stderr.write(chunk.decode("utf-8", "replace"))
                sys.stderr.flush()
                continue
            total += len(chunk)
            if total > _MAX_MESSAGES:
                raise WorkerBug("the contained worker sent more than 512 MB of messages")
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                message = _decode(line)
                if isinstance(message, dict) and "progress" in message:
                    if on_message:
                        on_message(message["progress"])
                else:
                    final.append(message)
    selector.close()
    return final


def _decode(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _outcome(messages: list[Any], status: int, containment: Containment) -> tuple[Any, Containment]:
    last = messages[-1] if messages else None
    if isinstance(last, dict) and "result" in last and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return last["result"], containment
    if isinstance(last, dict) and isinstance(last.get("error"), dict):
        error = last["error"]
        text = str(error.get("message", ""))[:2000]
        if error.get("kind") == "bug":
            raise WorkerBug(text)
        cls = _ERRORS.get(str(error.get("kind")), BadInput)
        path = error.get("path")
        raise cls(text, str(path) if path else None)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        raise BadInput(f"the contained worker was killed by {name} while loading or running the models "
                       "(a malformed model, or out of memory)")
    raise WorkerBug(f"the contained worker exited with status {os.waitstatus_to_exitcode(status)} and no result")


def _child(task, args, reads, writes, scratch, message_w, output_w, containment, trust_code) -> None:
    code = 0
    try:
        os.dup2(output_w, 1)
        os.dup2(output_w, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(message_w, 3)
        os.closerange(4, _max_fd())  # nothing the parent had open stays reachable
        _die_with_parent()
        os.environ.update(TMPDIR=str(scratch), HOME=str(scratch))  # caches and configs land in scratch
        tempfile.tempdir = str(scratch)
        from convrepair.contain import landlock, policy, seccomp

        rules = policy.grants(reads, writes)
        seccomp.deny_sockets()
        abi = landlock.restrict(rules, containment.landlock_abi)
        contain.declare(Containment(abi, True), trust_code)
        channel = os.fdopen(3, "wb", buffering=0)

        def send(progress: Any) -> None:
            channel.write(json.dumps({"progress": progress}).encode() + b"\n")

        try:
            result = task(send, *args)
            reply: dict[str, Any] = {"result": result}
        except ConvrepairError as exc:
            reply = {"error": {"kind": type(exc).__name__ if type(exc).__name__ in _ERRORS else "BadInput",
                               "message": exc.message, "path": str(exc.path) if exc.path else None}}
        except Exception as exc:  # noqa: BLE001 - reported to the parent, never raised across the fork
            full = str(exc)
            if any(word in full for word in _DENIED):  # the frameworks' own "errno 13" texts included
                last = [line for line in full.splitlines() if any(word in line for word in _DENIED)][-1]
                reply = {"error": {"kind": "UnsafeModel", "message": "the sandbox stopped what the model did: "
                                   f"{type(exc).__name__}: {' '.join(last.split())[:300]}"}}
            else:
                if os.environ.get("CONVREPAIR_DEBUG"):  # the worker's traceback, forwarded to the parent's stderr
                    import traceback

                    traceback.print_exc()
                reply = {"error": {"kind": "bug", "message": f"{type(exc).__name__}: {exception_text(exc, 400)}"}}
        channel.write(json.dumps(reply, default=_json_default).encode() + b"\n")
        channel.close()
    except BaseException as exc:  # noqa: BLE001 - the child must never return into the parent's code
        try:
            os.write(3, json.dumps({"error": {"kind": "bug", "message": f"worker setup: {type(exc).__name__}: {exc}"}}).encode() + b"\n")
        except OSError:
            pass
        code = 3
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _json_default(value: Any) -> Any:
    from convrepair.fsutil import _json_default as default

    return default(value)


def _max_fd() -> int:
    try:
        return min(os.sysconf("SC_OPEN_MAX"), 1 << 16)
    except (OSError, ValueError):
        return 1024


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
