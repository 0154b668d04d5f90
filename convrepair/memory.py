"""How much memory a batch may take: the process's resident and peak size, a model's measured
bytes per sample, and the budget one batch is held to (issue 21: batches sized by memory, not count).

Reads only /proc/self and /proc/meminfo (both readable in the contained worker), getrusage and getrlimit.
"""

from __future__ import annotations

import os
import resource

import numpy as np

DEFAULT_SHARE = 0.25  # of the memory available (the machine's, and the process's own limit)
# … but never more than this for one batch by default: on CPUs a larger batch buys no speed (Keras
# ResNet50 at 224 px: 150 MB a sample, the same CPU time in batches of 8 as of 32), only memory
DEFAULT_CAP_MB = 1024
_FLOOR_MB = 64  # a budget is never below this


def rss() -> int:
    """This process's resident size now, in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak() -> int:
    """This process's peak resident size so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available() -> int | None:
    """MemAvailable of the machine, in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def limit() -> int | None:
    """The process's own memory limit (RLIMIT_DATA: a contained worker's `--memory-mb`), if any."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def budget(memory_mb: int | None) -> int:
    """Bytes one batch may take: the caller's number, else a share of what is available and of the
    process's own limit (capped), so a batch never grows a worker into its `--memory-mb`."""
    if memory_mb:
        return max(int(memory_mb), _FLOOR_MB) << 20
    shares = [int(room * DEFAULT_SHARE) for room in (available(), limit()) if room]
    return max(min([DEFAULT_CAP_MB << 20, *shares]), _FLOOR_MB << 20)


def trim() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim): TensorFlow frees a
    batch's activations into the heap, which keeps them (2 GB after one 32-image ResNet50 batch)
    while the next model runs; a no-op where there is no glibc."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        try:  # the process's own symbols (no find_library: it runs ldconfig, a child the worker may not start)
            _LIBC = ctypes.CDLL(None)
            _LIBC.malloc_trim  # noqa: B018 - musl and others have none
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def per_sample(rss_before: int, peak_before: int, count: int, data, outputs: list[np.ndarray]) -> int:
    """Bytes one sample took in a batch of `count`: the growth of the peak (or of the resident size,
    where the peak was set earlier by something bigger), never less than its inputs and outputs."""
    grown = peak() - rss_before if peak() > peak_before else rss() - rss_before
    carried = sum(x[:count].nbytes for x in data.inputs) + sum(o.nbytes for o in outputs)
    return int(max(grown, carried, 1) / max(count, 1))
