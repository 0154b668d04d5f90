"""Latent faults (issue 18 item 4): a parameter or attribute difference the sampled outputs do not
reveal is reported in `check --json` as `latent` with its measured effect; the verdict stays
`equivalent` and exit 0, unless `--strict`."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

import faults as fi


def _with_clip(source, out, high: float):
    """The square digits CNN with a Clip(0, high) after relu2: a bound its activations never reach."""
    model = onnx.load(str(source))
    relu = fi._node(model, "relu2", "Relu")
    fi._rewire_input(model, relu.output[0], "clipped")
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0.0, np.float32), "clip_lo"),
                                    numpy_helper.from_array(np.array(high, np.float32), "clip_hi")])
    position = list(model.graph.node).index(relu) + 1
    model.graph.node.insert(position, helper.make_node("Clip", [relu.output[0], "clip_lo", "clip_hi"], ["clipped"], name="clip"))
    onnx.save(model, str(out))
    return out


def test_a_difference_the_samples_do_not_reveal_is_latent(fixtures_dir, tmp_path, cli):
    square, _ = fi.build_square_cnn(fixtures_dir / "digits_train_nchw.npz", tmp_path)
    source = _with_clip(square, tmp_path / "source.onnx", 1000.0)
    target = _with_clip(square, tmp_path / "target.onnx", 100.0)
    data = fixtures_dir / "digits_test_nchw.npz"
    plain = cli("check", source, target, "--data", data, "--rounds", "2", "--samples", "100", "--json", "-", cwd=tmp_path)
    report = json.loads(plain.stdout)
    assert plain.code == 0 and report["verdict"] == "equivalent", plain.stderr[-1500:]
    assert report["latent_audit"]["ran"] is True
    [latent] = report["latent"]
    assert (latent["node"], latent["type"]) == ("clip", "hyperparameter"), latent
    assert "max" in latent["detail"]
    assert latent["effect"]["measured"] is True and latent["effect"]["output_rel_l2"] == 0.0  # put back: nothing moves
    strict = cli("check", source, target, "--data", data, "--rounds", "2", "--samples", "100", "--strict", cwd=tmp_path)
    assert strict.code == 1 and "latent hyperparameter at clip" in strict.stdout, strict.stdout[-1500:]


def test_a_clean_pair_has_no_latent_faults(fixtures_dir, tmp_path, cli):
    square, _ = fi.build_square_cnn(fixtures_dir / "digits_train_nchw.npz", tmp_path)
    result = cli("check", square, square, "--data", fixtures_dir / "digits_test_nchw.npz", "--rounds", "1",
                 "--samples", "50", "--strict", "--json", "-", cwd=tmp_path)
    report = json.loads(result.stdout)
    assert result.code == 0 and report["latent"] == [] and report["latent_audit"]["ran"] is True
