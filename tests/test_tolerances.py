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


def test_layer_rows_carry_error_percentiles_and_the_minimum_passing_tolerance(cli, work):
    from convrepair.localize.tensors import direct_diff

    s = np.arange(24, dtype=np.float32).reshape(4, 6) + 1
    diff = direct_diff(s, s * np.float32(1.01)).to_json()
    assert diff["min_passing_tolerance"] == {"atol": diff["max_abs"], "rtol": diff["max_rel"]}
    assert abs(diff["rel_error_percentiles"]["median"] - 0.01) < 1e-6

    model = work / "torch_cnn.pt2"
    result = cli("check", model, model, "--data", work / "digits_test_nchw.npz", "--rounds", "1", "--samples", "40",
                 "--localize", "--json", "-")
    assert result.code == 0, result.stderr
    layers = json.loads(result.stdout)["localization"]["layers"]
    compared = [row for row in layers if row.get("rel_error_percentiles")]
    assert compared and all(set(row["rel_error_percentiles"]) == {"mean", "median", "p90", "p99"} for row in compared)
    assert all("min_passing_tolerance" in row for row in compared)
