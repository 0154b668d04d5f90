"""Per-output tolerances (Polygraphy's `--atol out0:1e-3`): each output held to its own numbers."""

from __future__ import annotations

import json

import numpy as np

from convrepair.golden import MARKER, OUTPUT_PREFIX


def test_per_output_atol_decides_and_names_its_numbers(cli, work):
    model, golden = work / "torch_cnn.pt2", work / "golden.npz"
    small = work / "small.npz"
    np.savez(small, x=np.load(work / "digits_test_nchw.npz")["x"][:60])
    assert cli("check", model, model, "--data", small, "--rounds", "1", "--samples", "60",
               "--save-outputs", golden).code == 0
    # the golden outputs moved by 1e-3 everywhere: labels stay, values do not
    arrays = dict(np.load(golden, allow_pickle=False))
    name = json.loads(str(arrays[MARKER]))["outputs"][0]["name"]
    arrays[OUTPUT_PREFIX + name] = arrays[OUTPUT_PREFIX + name] + np.float32(1e-3)
    shifted = work / "shifted.npz"
    np.savez(shifted, **arrays)

    loose = cli("check", shifted, model, "--rounds", "1", "--samples", "60", "--atol", f"{name}:1e-2", "--json", "-")
    assert loose.code == 0, loose.stderr
    report = json.loads(loose.stdout)
    assert report["tolerance"]["per_output"][name]["atol"] == 1e-2  # its rtol stays the common one

    tight = cli("check", shifted, model, "--rounds", "1", "--samples", "60", "--atol", f"{name}:1e-4", "--json", "-")
    assert tight.code == 1
    reasons = json.loads(tight.stdout)["reasons"]
    assert any("atol=0.0001" in reason and name in reason for reason in reasons)

    unknown = cli("check", shifted, model, "--rounds", "1", "--samples", "60", "--atol", "nope:1e-2")
    assert unknown.code == 2 and "nope" in unknown.stderr and name in unknown.stderr
    bad = cli("check", shifted, model, "--atol", f"{name}:lots")
    assert bad.code == 2 and "--atol" in bad.stderr
