"""What a contained worker may touch: the Python installation and the system libraries to read,
the job's models and data to read, its scratch and staged outputs to write — nothing else.

Deliberately absent: the home directory, /etc (but the loader's cache and the time zone), other
processes' /proc entries, the registry beside the model, signing keys, the network.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import site
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from convrepair.contain import landlock
from convrepair.contain.landlock import Grant

# read-only: shared libraries, the loader's configuration, facts about the machine frameworks ask
_SYSTEM_READ = (
    "/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib", "/lib64", "/usr/share/zoneinfo",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys/vm/overcommit_memory",
    "/sys/devices", "/sys/bus/pci", "/sys/fs/cgroup",
    "/dev/urandom", "/dev/random",
)
_DEVICES = ("/dev/null", "/dev/zero")
# an NVIDIA GPU: the device nodes (with ioctl) and what the driver reads about the bus
_GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
_GPU_READ = ("/proc/driver/nvidia", "/sys/module/nvidia", "/dev/nvidia-caps")
# helper programs a runtime ships inside its package and runs as part of its own work, by
# (package, path inside it): ExecuTorch writes every .pte with its bundled `flatc`. They run under
# the worker's own rules (same files, no sockets); nothing else may be executed.
_PACKAGE_TOOLS = (("executorch", "data/bin/flatc"),)
# the ELF interpreter those dynamically linked tools start through (execute is checked on it too)
_ELF_INTERPRETERS = ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1")


def python_installation() -> list[Path]:
    """Where the interpreter, the standard library and every importable package live."""
    places = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    places |= {value for key, value in sysconfig.get_paths().items() if key in ("stdlib", "platstdlib", "purelib", "platlib")}
    # sys.path[0] is the script's folder or the working directory, not the installation
    entries = sys.path if sys.flags.safe_path else sys.path[1:]
    cwd = os.getcwd()
    places |= {entry for entry in entries if entry and entry != cwd and os.path.isdir(entry)}
    packages, metadata = _plugin_packages_and_metadata()
    places |= metadata
    for module in packages:  # editable installs resolve outside site-packages
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            places |= set(spec.submodule_search_locations or ([os.path.dirname(spec.origin)] if spec.origin else []))
    places.add(os.path.dirname(os.path.realpath(sys.executable)))
    return sorted(Path(p) for p in places if p)


def _plugin_packages_and_metadata() -> tuple[set[str], set[str]]:
    """The top-level packages of convrepair and of every announced plugin, and the metadata
    folders (dist-info, egg-info — wherever they lie on sys.path) the worker reads them from."""
    import importlib.metadata

    from convrepair.plugins import ENTRY_POINT_GROUP

    entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    packages = {"convrepair", *(ep.value.split(":")[0].split(".")[0] for ep in entry_points)}
    dists = [ep.dist for ep in entry_points]
    try:
        dists.append(importlib.metadata.distribution("convrepair"))
    except importlib.metadata.PackageNotFoundError:
        pass
    metadata = {os.path.abspath(path) for dist in dists if (path := getattr(dist, "_path", None)) is not None}
    return packages, metadata


def package_tools() -> list[Path]:
    """The installed helper programs of `_PACKAGE_TOOLS` (a package not installed has none)."""
    found = []
    for package, inner in _PACKAGE_TOOLS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            if os.path.isfile(os.path.join(folder, inner)):
                found.append(Path(folder, inner))
    if found:
        found += [Path(os.path.realpath(p)) for p in _ELF_INTERPRETERS if os.path.exists(p)]
    return found


def model_files(paths: Iterable[Path]) -> list[Path]:
    """A model with what travels beside it: `NAME` (file or SavedModel folder) and `NAME.*`
    (its sidecar, kept calibration data, ONNX external data named after it).

    `NAME` is the caller's choice and may be a link; a companion found by the pattern is granted
    only where it is no link at all — a `model.onnx.data` pointing at a key elsewhere grants nothing
    (a Landlock rule on a link would cover the file it points to)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path).absolute()
        found.append(path)
        found += [Path(p) for p in glob.glob(glob.escape(str(path)) + ".*") if not os.path.islink(p)]
    return found


def grants(reads: Iterable[Path], writes: Iterable[Path]) -> list[Grant]:
    """Every rule of a worker: system and Python read-only, `reads` read-only, `writes` writable."""
    rules = [Grant(Path(p), landlock.READ) for p in (*_SYSTEM_READ, *python_installation())]
    rules += [Grant(Path(p), landlock.DEVICE) for p in _DEVICES]
    rules.append(Grant(Path(f"/proc/{os.getpid()}"), landlock.READ))  # /proc/self of the worker only
    if os.path.exists("/dev/nvidiactl"):
        rules += [Grant(Path(p), landlock.DEVICE) for p in (*_GPU_DEVICES, *glob.glob("/dev/nvidia[0-9]*"))]
        rules += [Grant(Path(p), landlock.READ) for p in _GPU_READ]
    rules += [Grant(p, landlock.READ | landlock.EXECUTE) for p in package_tools()]
    rules += [Grant(p, landlock.READ) for p in model_files(reads)]
    rules += [Grant(Path(p), landlock.WRITE) for p in writes]
    return rules
