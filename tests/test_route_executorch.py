"""The ExecuTorch route: a .pt2 lowered to XNNPACK (.pte), run by ExecuTorch's runtime, checked
against its source through the real CLI, inside the contained worker (which must let ExecuTorch run
its bundled `flatc`)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from convrepair.sidecar import read_sidecar

pytestmark = pytest.mark.slow

if importlib.util.find_spec("executorch") is None:
    if os.environ.get("CI"):  # CI installs the [executorch] extra: a missing runtime is a failure there
        raise RuntimeError("executorch is not installed (pip install -e '.[executorch]')")
    pytest.skip("executorch is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory):
    """The fixture CNN converted once through the CLI, validated on the test split."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("executorch")
    result = run_cli("convert", fixtures_dir / "torch_cnn.pt2", "--to", "executorch", "--data",
                     fixtures_dir / "digits_test_nchw.npz", "--out-dir", out, "--json", out / "convert.json")
    return result, out


def test_the_route_is_a_plugin_through_the_entry_point_door():
    from convrepair.plugins import default_registry

    registry = default_registry()
    record = next(r for r in registry.records if r.plugin is not None and r.plugin.name == "executorch")
    assert record.entry_point == "executorch = convrepair_plugins.executorch"  # what `convrepair plugins` lists
    assert record.plugin.unavailable_reason() is None
    assert registry.converters["torch-to-executorch"].target == "executorch" and "pte" in registry.formats


def test_pt2_converts_to_pte_and_checks_equivalent(converted):
    result, out = converted
    assert result.code == 0, result.stderr
    (conversion,) = json.loads((out / "convert.json").read_text())["conversions"]
    assert conversion["route"] == ["torch-to-executorch"] and conversion["output"]["format"] == "pte"
    validation = conversion["validation"]
    assert validation["verdict"] == "equivalent" and validation["label_agreement"] == 1.0 and validation["n"] == 400
    sidecar = read_sidecar(out / "torch_cnn.pte")
    assert sidecar.precision == "fp32" and sidecar.input_layout == ["NCHW"]
    details = sidecar.steps[-1].details
    assert details["delegated"]["delegate_calls"] >= 1 and details["localization"] == "output-level only"
    for chatter in ("torchao", "cpuinfo", "pytree"):  # the runtime's stderr talk stays off the terminal
        assert chatter not in result.stderr


def test_runner_splits_batches_larger_than_the_memory_plan(converted, fixtures_dir):
    from convrepair.model import model_ref
    from convrepair.plugins import default_registry

    _, out = converted
    registry = default_registry()
    x = np.load(fixtures_dir / "digits_test_nchw.npz")["x"][:75]
    with registry.load(model_ref(out / "torch_cnn.pte", registry)) as runner:
        assert runner.capacity is not None and runner.capacity < len(x)
        (got,) = runner.run({runner.inputs[0].name: x}).values()
    with registry.load(model_ref(fixtures_dir / "torch_cnn.pt2", registry), device="cpu") as source:
        (want,) = source.run({source.inputs[0].name: x}).values()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_other_dynamic_axes_are_fixed_at_the_example_size_and_other_sizes_refused(tmp_path):
    import torch

    from convrepair.convert import convert
    from convrepair.errors import BadInput
    from convrepair.model import model_ref
    from convrepair.plugins import default_registry

    class Pool(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=1)

    program = torch.export.export(Pool(), (torch.zeros(2, 5, 3),),
                                  dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)},))
    torch.export.save(program, tmp_path / "seq.pt2")
    registry = default_registry()
    convert(registry, tmp_path / "seq.pt2", "executorch", out=tmp_path / "seq.pte")
    assert read_sidecar(tmp_path / "seq.pte").steps[-1].details["fixed_axes"] == {"x": {"1": 5}}
    x = np.random.default_rng(0).normal(size=(3, 5, 3)).astype(np.float32)
    with registry.load(model_ref(tmp_path / "seq.pte", registry)) as runner:
        (got,) = runner.run({runner.inputs[0].name: x}).values()
        np.testing.assert_allclose(got, x.mean(axis=1), atol=1e-6)
        with pytest.raises(BadInput, match="expects shape"):
            runner.run({runner.inputs[0].name: x[:, :4]})


def test_a_torchscript_hop_is_refused_by_name(fixtures_dir, tmp_path):
    """A route through onnx2torch can fall back to TorchScript; the .pte step names that, not a zip error."""
    from convrepair.errors import BadInput
    from convrepair.model import model_ref
    from convrepair.plugins import ConvertRequest, default_registry
    from convrepair_plugins.executorch.to_pte import torch_to_executorch

    registry = default_registry()
    request = ConvertRequest(model_ref(fixtures_dir / "torch_cnn.pt", registry), tmp_path / "out.pte")
    with pytest.raises(BadInput, match=r"needs a torch.export program \(.pt2\), and the step before wrote torchscript"):
        torch_to_executorch(request)
