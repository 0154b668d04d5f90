"""Zip archives a model arrives in (.keras, TorchScript, .pt2), bounded before any loader opens
them: a small file must not become gigabytes in memory (a zip bomb), and the names a loader
looks up must mean one member each.

Read from the central directory and every member's local header — never by decompressing:
  * a member's declared size: at most `MAX_MEMBER`, all together at most `MAX_TOTAL`;
  * its size against what it occupies in the file: a member past `RATIO_FLOOR` may expand at most
    `MAX_RATIO` times (weights compress a little; megabytes of zeros compress a thousandfold);
  * the local header agrees with the central directory (a reader that trusts either sees the same);
  * no two members share a name, and none climbs out of the archive (`..`, absolute paths).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from convrepair.errors import UnsafeModel

MAX_MEMBER = 32 << 30
MAX_TOTAL = 64 << 30
MAX_RATIO = 100
RATIO_FLOOR = 64 << 20
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def check_zip(path: Path, what: str = "archive") -> None:
    """UnsafeModel naming the first member out of bounds; nothing when `path` is not a zip (the
    loader reports that)."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    with archive, open(path, "rb") as raw:
        seen: set[str] = set()
        total = 0
        for info in archive.infolist():
            name = info.filename
            if name in seen:
                raise UnsafeModel(f"{what} holds two members named {name!r}; refusing to guess which one loads", path)
            seen.add(name)
            if name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
                raise UnsafeModel(f"{what} member {name!r} points outside the archive", path)
            size = info.file_size
            total += size
            if size > MAX_MEMBER or total > MAX_TOTAL:
                raise UnsafeModel(f"{what} member {name!r} declares {size / 2**30:.1f} GiB "
                                  f"(limit {MAX_MEMBER >> 30} GiB a member, {MAX_TOTAL >> 30} GiB in all)", path)
            if size > RATIO_FLOOR and size > MAX_RATIO * max(info.compress_size, 1):
                raise UnsafeModel(f"{what} member {name!r} expands {info.compress_size / 2**20:.1f} MB in the file "
                                  f"to {size / 2**20:.0f} MB (more than {MAX_RATIO}x): a zip bomb", path)
            _same_in_local_header(raw, info, path, what)


def _same_in_local_header(raw, info: zipfile.ZipInfo, path: Path, what: str) -> None:
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size:
        raise UnsafeModel(f"{what} member {info.filename!r}: local header cut short", path)
    (magic, _version, flags, method, _time, _date, _crc, compressed, size, name_length, _extra) = _LOCAL_HEADER.unpack(header)
    if magic != b"PK\x03\x04":
        raise UnsafeModel(f"{what} member {info.filename!r}: no local header where the directory points", path)
    name = raw.read(name_length).decode("utf-8" if flags & 0x800 else "cp437", "replace")
    if name != info.filename or method != info.compress_type:
        raise UnsafeModel(f"{what} member {info.filename!r}: its local header names another member or method", path)
    if not flags & 0x08 and (compressed, size) != (info.compress_size, info.file_size) \
            and 0xFFFFFFFF not in (compressed, size):  # sizes after the data, or in a ZIP64 field
        raise UnsafeModel(f"{what} member {info.filename!r}: its local header and the directory disagree on its size", path)
