"""The registry's append-only transparency log of reviewer decisions, built the way Certificate
Transparency and Sigstore's Rekor are: entries are leaves of an RFC 9162 Merkle tree, and after
every append a checkpoint (origin, tree size, root) is signed by the key that appended.

    <root>/transparency/entries/000000-approved.dsse.json   leaf i: the decision envelope's bytes
    <root>/transparency/checkpoint                          the newest signed note
    <root>/transparency/lock                                appends take it (flock)

<root> is the nearest directory at or above the log holding `trust.json` or `transparency/`
(the registry root; a promoted version carries its own snapshot), else the directory of the trust
file in use: decisions land beside trust.json (layout.py holds the one rule).
Deleting, reordering or replacing an entry, the newest included, no longer matches the signed
checkpoint; truncating the log together with its checkpoint needs a trusted key and is caught
against a pinned older checkpoint by a consistency proof.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from convrepair.fsutil import atomic_output
from convrepair.ledger import checkpoint as notes
from convrepair.ledger import merkle
from convrepair.ledger.layout import TLOG_DIR, ledger_root

ENTRIES = "entries"
CHECKPOINT = "checkpoint"
_ENTRY = re.compile(r"^(\d{6})-([a-z]+)\.dsse\.json$")
_PENDING = ".pending-"


@dataclass
class Entry:
    index: int
    path: Path
    data: bytes

    @property
    def leaf(self) -> bytes:
        return merkle.leaf_hash(self.data)


@dataclass
class LogState:
    """What is on disk, checked against the signed checkpoint; `problems` empty means consistent."""

    directory: Path
    entries: list[Entry] = field(default_factory=list)
    checkpoint: notes.Checkpoint | None = None
    signer: str | None = None
    note: str | None = None  # the checkpoint's signed note as read
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def leaves(self) -> list[bytes]:
        return [e.leaf for e in self.entries]

    def inclusion(self, index: int) -> dict:
        """An RFC 9162 inclusion proof of entry INDEX against the checkpoint, and whether it verifies."""
        leaves = self.leaves
        proof = merkle.inclusion_proof(index, leaves)
        ok = self.checkpoint is not None and merkle.verify_inclusion(index, self.checkpoint.size, leaves[index], proof,
                                                                     self.checkpoint.root)
        return {"index": index, "tree_size": len(leaves), "leaf_hash": leaves[index].hex(),
                "proof": [p.hex() for p in proof], "ok": ok}

    def consistency_from(self, pinned: notes.Checkpoint) -> tuple[bool, str]:
        """Whether the pinned (older or equal) checkpoint is a prefix of this log."""
        current = self.checkpoint
        if current is None:
            return False, "the log has no checkpoint"
        if pinned.origin != current.origin:
            return False, f"pinned checkpoint is of another log ({pinned.origin}, not {current.origin})"
        if pinned.size > current.size:
            return False, (f"the log holds {current.size} decision(s) but the pinned checkpoint saw {pinned.size}: "
                           "decisions were removed or the store was rolled back")
        proof = merkle.consistency_proof(pinned.size, self.leaves) if pinned.size else []
        if not merkle.verify_consistency(pinned.size, current.size, pinned.root, current.root, proof):
            return False, f"the log is not an extension of the pinned checkpoint (size {pinned.size}): history was rewritten"
        return True, f"consistent with the pinned checkpoint (size {pinned.size} → {current.size}, {len(proof)}-hash proof)"


class TransparencyLog:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @classmethod
    def for_log(cls, log_path: Path, trust: Path | None = None) -> TransparencyLog:
        return cls(ledger_root(log_path, trust) / TLOG_DIR)

    @property
    def entries_dir(self) -> Path:
        return self.directory / ENTRIES

    @property
    def checkpoint_path(self) -> Path:
        return self.directory / CHECKPOINT

    def exists(self) -> bool:
        return self.directory.is_dir()

    def read(self, trusted: dict) -> LogState:
        """Every entry and the checkpoint, with each way they disagree named."""
        state = LogState(self.directory)
        files = sorted(self.entries_dir.iterdir()) if self.entries_dir.is_dir() else []
        for path in files:
            match = _ENTRY.match(path.name)
            if match:
                state.entries.append(Entry(int(match.group(1)), path, path.read_bytes()))
            elif not path.name.startswith(_PENDING):
                state.problems.append(f"{path.name} is not a decision entry")
        for position, entry in enumerate(state.entries):
            if entry.index != position:
                state.problems.append(f"decision {position} is missing ({entry.path.name} follows {position - 1}): an entry was deleted")
                break
        if not self.checkpoint_path.is_file():
            if state.entries:
                state.problems.append("decisions without a signed checkpoint (the checkpoint was deleted)")
            return state
        try:
            state.note = self.checkpoint_path.read_text()
            state.checkpoint, state.signer = notes.verify(state.note, trusted)
        except (notes.NoteError, UnicodeDecodeError) as exc:
            state.problems.append(f"checkpoint: {exc}")
            return state
        size, count = state.checkpoint.size, len(state.entries)
        if count < size:
            state.problems.append(f"the signed checkpoint covers {size} decision(s) but {count} are present: "
                                  "a decision was deleted")
        elif count > size:
            state.problems.append(f"{count - size} decision(s) are not covered by the signed checkpoint "
                                  f"(from {state.entries[size].path.name}): added behind the log's back")
        elif merkle.root(state.leaves) != state.checkpoint.root:
            state.problems.append("the decisions do not hash to the signed checkpoint's root: one was replaced or reordered")
        return state

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive for appends (several reviewers at once, or approve racing approve)."""
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._finish_interrupted_append()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, state: LogState, data: bytes, kind: str, private_key) -> tuple[Entry, notes.Checkpoint]:
        """Add one entry after STATE (read under `locked()`), then sign the new checkpoint with PRIVATE_KEY.

        The entry is written under a pending name, the checkpoint replaced, then the entry renamed:
        an append cut short is finished or undone by the next one (`_finish_interrupted_append`).
        """
        index = len(state.entries)
        origin = state.checkpoint.origin if state.checkpoint else f"convrepair.dev/decisions/{uuid.uuid4()}"
        entry = Entry(index, self.entries_dir / f"{index:06d}-{kind}.dsse.json", data)
        new = notes.Checkpoint(origin, index + 1, merkle.root(state.leaves + [entry.leaf]))
        pending = self.entries_dir / f"{_PENDING}{entry.path.name}"
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with atomic_output(self.checkpoint_path) as tmp:
            tmp.write_text(notes.sign(new, private_key))
        os.link(pending, entry.path)  # never replaces an entry that is there
        pending.unlink()
        return entry, new

    def _finish_interrupted_append(self) -> None:
        """A pending entry the checkpoint already covers is put in place; one it does not is dropped."""
        for pending in sorted(self.entries_dir.glob(f"{_PENDING}*")):
            final = pending.with_name(pending.name[len(_PENDING):])
            match = _ENTRY.match(final.name)
            covered = False
            if match and self.checkpoint_path.is_file() and not final.exists():
                try:
                    point, _ = notes.parse(self.checkpoint_path.read_text())
                    leaves = [merkle.leaf_hash(p.read_bytes()) for p in sorted(self.entries_dir.iterdir()) if _ENTRY.match(p.name)]
                    covered = (int(match.group(1)) == len(leaves) == point.size - 1
                               and merkle.root(leaves + [merkle.leaf_hash(pending.read_bytes())]) == point.root)
                except (notes.NoteError, OSError, UnicodeDecodeError):
                    covered = False
            if covered:
                os.link(pending, final)
            pending.unlink()

    def snapshot_to(self, destination: Path) -> None:
        """Copy the entries and checkpoint (as they are now) into DESTINATION/transparency."""
        import shutil

        target = Path(destination) / TLOG_DIR
        (target / ENTRIES).mkdir(parents=True)
        for path in sorted(self.entries_dir.iterdir()):
            if _ENTRY.match(path.name):
                shutil.copy2(path, target / ENTRIES / path.name)
        shutil.copy2(self.checkpoint_path, target / CHECKPOINT)
