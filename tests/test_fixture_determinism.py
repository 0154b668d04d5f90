"""Fixtures are bit-identical across builds on the same machine (seeds, deterministic TF ops, one
thread, no save times or random ids in archives): a test that relies on a fixture's weights relies
on these bytes. One exception, checked by value instead: Keras's SavedModel export lists its
variables in an order that changes from run to run (keras `_list_variables_used_by_fns` walks
graph captures), so the SavedModel's variables are compared as a set of identical tensors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file the build writes (SavedModel folders included), by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(".") and "zoo" not in path.relative_to(folder).parts
        and ".savedmodel" not in str(path.relative_to(folder))
        and not path.name.endswith(".convrepair.json")  # sidecars name their model's digest: compared through it
    }


@pytest.mark.slow
def test_fixture_build_is_bit_identical(fixtures_dir, tmp_path):
    """Build the fixtures again and compare every byte with the copy the tests use."""
    subprocess.run([sys.executable, str(ROOT / "fixtures" / "build.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=1200)
    built, used = digests(tmp_path), digests(fixtures_dir)
    expected = {name: digest for name, digest in used.items() if name in built}
    assert set(built) <= set(used), f"files the tests' copy lacks: {sorted(set(built) - set(used))}"
    differing = sorted(name for name in built if built[name] != expected[name])
    assert not differing, f"fixture files differ between two builds: {differing}"
    assert saved_variables(tmp_path / "keras_cnn.savedmodel") == saved_variables(fixtures_dir / "keras_cnn.savedmodel")


def saved_variables(folder: Path) -> list[str]:
    """sha256 of every variable value a SavedModel holds, sorted (their order in the file varies)."""
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(folder / "variables" / "variables"))
    values = [reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if "VARIABLE_VALUE" in name]
    return sorted(hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest() for value in values)
