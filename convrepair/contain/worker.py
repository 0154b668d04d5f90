"""One contained worker per job: a fresh interpreter, confined before it imports anything but
convrepair, runs the job's engine call and brings its result back as JSON.

What crosses into the worker is chosen here: the task (pickled by the parent, read by the
worker — never the other way), the paths it may read and write, an allow-listed environment
(`worker_env`: no tokens, no credentials) and no descriptor above stderr but its message channel.
The worker is an exec'd interpreter, not a fork of the parent, so nothing the parent holds in
memory (a loaded key, a registry token) is in its address space. It runs under a subreaper
(`supervisor.py`) in its own session and process group; when it ends, every process it left
behind is killed before the parent reads its result.

The parent never unpickles anything from the worker (it ran hostile content): the worker writes
newline-delimited JSON messages on a pipe — `{"contained": …}` once confined, progress
(`{"progress": …}`) and at the end either `{"result": …}` or `{"error": …}`. The worker's stdout
and stderr are forwarded to the parent's stderr, so JSON on the parent's stdout stays clean.
Where no containment can be had, the task runs in this process with that fact declared
(code-carrying formats are then refused untrusted).
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from convrepair import contain
from convrepair.contain import DEFAULT_MEMORY_MB, Containment
from convrepair.errors import BadInput, ConversionFailed, ConvrepairError, PluginUnavailable, UnsafeModel, exception_text

Send = Callable[[Any], None]
_ERRORS = {cls.__name__: cls for cls in (BadInput, UnsafeModel, PluginUnavailable, ConversionFailed, ConvrepairError)}
_MAX_MESSAGES = 512 * 1024 * 1024  # a child cannot make the parent hold more than this
_DENIED = ("Permission denied", "Operation not permitted")
# what a worker's environment may hold: the search path, the locale, thread counts and the
# frameworks' own switches — nothing else (registry, cloud and cluster credentials stay out)
_ENV_NAMES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONWARNINGS",
                        "PYTHONDONTWRITEBYTECODE", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                        "CUBLAS_WORKSPACE_CONFIG", "CONVREPAIR_DEBUG", "CONVREPAIR_CONTAIN", "XLA_FLAGS",
                        "KERAS_BACKEND", "TF_DETERMINISTIC_OPS", "TF_USE_LEGACY_KERAS"})
# (not "TF_": Terraform's TF_TOKEN_* and TF_VAR_* share it)
_ENV_PREFIXES = ("LC_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "GOTO_", "BLIS_", "NUMEXPR_", "VECLIB_", "TF_CPP_",
                 "TF_ENABLE_", "TF_NUM_", "TF_INTRA_OP", "TF_INTER_OP", "TF_FORCE_", "TF_XLA_", "TF_GPU_",
                 "PYTORCH_", "ORT_", "NVIDIA_")


class WorkerBug(RuntimeError):
    """The contained job failed in a way that is our bug (the CLI reports it as exit 70)."""


def worker_env(scratch: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's whole environment: the allow-listed variables, HOME and TMPDIR its scratch."""
    environ = os.environ if environ is None else environ
    kept = {k: v for k, v in environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    return kept | {"HOME": str(scratch), "TMPDIR": str(scratch)}


def run_contained(task: Callable[..., Any], *args: Any, reads: list[Path], writes: list[Path] = (),
                  on_message: Callable[[Any], None] | None = None, trust_code: bool = False,
                  memory_mb: int = DEFAULT_MEMORY_MB) -> tuple[Any, Containment]:
    """Run `task(send, *args)` confined to reading `reads` and writing `writes`; (result, containment).

    `reads`: the models (with what lies beside them) and data. `writes`: directories the job
    writes; a fresh scratch directory (its TMPDIR) is added and removed afterwards. `memory_mb`:
    the worker's address-space limit (0: none). A containment that cannot be put in place is a
    BadInput naming why (nothing ran), never a silent fallback.
    """
    containment = contain.probe()
    if not containment.in_force:
        contain.declare(containment, trust_code)
        return task(on_message or (lambda _message: None), *args), containment
    if memory_mb < 0:
        raise BadInput(f"--memory-mb must be 0 (no limit) or a positive number of MB, got {memory_mb}")
    containment = replace(containment, memory_mb=memory_mb)
    scratch = Path(tempfile.mkdtemp(prefix="convrepair-job-"))
    try:
        header = {"reads": [str(Path(p).absolute()) for p in reads if p is not None],
                  "writes": [str(Path(p).absolute()) for p in (*writes, scratch)], "scratch": str(scratch),
                  "landlock_abi": containment.landlock_abi, "trust_code": trust_code, "memory_mb": memory_mb}
        payload = json.dumps(header).encode() + b"\n" + _pickle_task(task, args)
        return _spawn(payload, worker_env(scratch), memory_mb, on_message, containment,
                      [Path(p) for p in reads if p is not None])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _pickle_task(task, args) -> bytes:
    try:
        import cloudpickle
    except ImportError:
        raise BadInput("the contained worker needs the cloudpickle package (pip install cloudpickle); "
                       f"or run uncontained with {contain.DISABLE_ENV}=off and --trust-model-code") from None
    return cloudpickle.dumps((task, args))


def _spawn(payload: bytes, env: dict[str, str], memory_mb: int, on_message, containment,
           reads: list[Path] = ()) -> tuple[Any, Containment]:
    from convrepair.contain.supervisor import Launch, supervise

    message_r, message_w = os.pipe()
    output_r, output_w = os.pipe()
    task_r, task_w = os.pipe()
    launch = Launch([sys.executable, "-P", "-m", "convrepair.contain.child"], env, task_r, message_w, output_w,
                    memory_mb, os.getpid())
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked supervisor imports and loads nothing
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # until the supervisor handles it
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        raise
    if pid == 0:  # the supervisor: never returns
        for fd in (message_r, output_r, task_w):
            os.close(fd)
        supervise(launch, libc)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    for fd in (message_w, output_w, task_r):
        os.close(fd)
    feeder = threading.Thread(target=_feed, args=(task_w, payload), daemon=True)
    feeder.start()
    try:
        messages = _pump(message_r, output_r, on_message)
    except BaseException:
        os.kill(pid, signal.SIGTERM)  # the supervisor kills the worker's whole tree, then ends
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(message_r)
        os.close(output_r)
    _, status = os.waitpid(pid, 0)
    feeder.join(timeout=1)
    return _outcome(messages, status, containment, reads)


def _feed(fd: int, payload: bytes) -> None:
    try:
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(payload)
    except OSError:
        pass  # the worker ended before reading it all: its outcome says why


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


def _outcome(messages: list[Any], status: int, containment: Containment, reads: list[Path] = ()) -> tuple[Any, Containment]:
    confirmed = any(isinstance(m, dict) and "contained" in m for m in messages)
    messages = [m for m in messages if not (isinstance(m, dict) and "contained" in m)]
    last = messages[-1] if messages else None
    if isinstance(last, dict) and "result" in last and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        if not confirmed:
            raise WorkerBug("the contained worker returned a result without confirming its containment")
        return last["result"], containment
    if isinstance(last, dict) and isinstance(last.get("error"), dict):
        error = last["error"]
        text = " ".join(str(error.get("message", "")).split())[:2000]
        if containment.memory_mb and error.get("kind") != "UnsafeModel":
            memory_limit(text, error.get("path") or next(iter(reads), None), containment.memory_mb)
        if error.get("kind") == "bug":
            raise WorkerBug(text)
        if error.get("kind") == "ContainmentFailed":
            raise BadInput(f"containment could not be put in place, nothing ran ({text}); to run uncontained "
                           f"set {contain.DISABLE_ENV}=off (code-carrying formats then need --trust-model-code)")
        cls = _ERRORS.get(str(error.get("kind")), BadInput)
        path = error.get("path")
        raise cls(text, str(path) if path else None)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        limit = f", or past its {containment.memory_mb} MB memory limit (--memory-mb)" if containment.memory_mb else ", or out of memory"
        raise BadInput(f"the contained worker was killed by {name} while loading or running the models "
                       f"(a malformed model{limit})")
    raise WorkerBug(f"the contained worker exited with status {os.waitstatus_to_exitcode(status)} and no result")


# What running out of the worker's address space looks like from inside it, and how it is said:
# ONNX Runtime's arena, C++'s std::bad_alloc, numpy's "Unable to allocate …", Python's MemoryError
# (and the child's own wording of it). GPU memory ("CUDA out of memory") is no part of the limit.
_OUT_OF_MEMORY = {"Failed to allocate memory": "ONNX Runtime's memory arena could not allocate a buffer",
                  "BFCArena::AllocateRaw": "ONNX Runtime's memory arena could not allocate a buffer",
                  "bad_alloc": "an allocation failed (std::bad_alloc)",
                  "Unable to allocate": None,  # numpy's own text names the size: quoted
                  "MemoryError": "Python raised MemoryError",
                  "needed more memory than the worker may use": "Python raised MemoryError"}


def memory_limit(text: str, path: str | Path | None, memory_mb: int) -> None:
    """Raise BadInput (exit 2) when a worker's error is an allocation failing under its memory limit:
    a limit the user set (--memory-mb) is configuration, not a bug in our code or the converter's
    (exit 70), nor a fault of the model ("fails to run this model")."""
    marker = next((m for m in _OUT_OF_MEMORY if m.lower() in text.lower()), None)
    if marker is None:
        return
    cause = _OUT_OF_MEMORY[marker]
    if cause is None:
        start = text.lower().index(marker.lower())
        cause = text[start:start + 100].split(" for an array")[0]
    raise BadInput(f"ran out of memory under the worker's {memory_mb} MB limit (--memory-mb); raise it or lower "
                   f"--samples/batch ({cause})", str(path) if path else None)
