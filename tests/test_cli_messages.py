"""What the terminal tells a person: no verdict without saying what it stands on."""

from __future__ import annotations

from conftest import run_cli


def test_check_without_data_says_the_samples_were_noise(fixtures_dir):
    model = fixtures_dir / "torch_cnn.pt2"
    result = run_cli("check", model, model, "--rounds", "1", "--samples", "8")
    assert result.code in (0, 1), result.stderr
    assert "random inputs, not real data (no --data)" in result.stdout
    real = run_cli("check", model, model, "--rounds", "1", "--samples", "8", "--data", fixtures_dir / "digits_test_nchw.npz")
    assert "not real data" not in real.stdout
