"""`.pt2` as people export it: unbounded and bounded `Dim`s, `Dim.AUTO`, several dynamic inputs;
a converter that refuses an input is exit 2 with its reason, one that crashes is exit 70 with its
cause, and `--debug` shows the contained worker's traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.export import Dim  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class Masked(torch.nn.Module):
    """Two inputs sharing a batch and a sequence-length `Dim` (input_ids-and-mask style)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x, mask):
        return (self.fc(x) * mask.unsqueeze(-1)).sum(1)


class Concat(torch.nn.Module):
    def forward(self, x, y):
        return torch.cat([x, y.reshape(x.shape[0], -1)], 1)


def _image():
    return (torch.randn(2, 1, 8, 8),)


FORMS = {
    "unbounded": (Net, _image, lambda: {"x": {0: Dim("batch")}}),
    "bounded": (Net, _image, lambda: {"x": {0: Dim("batch", min=1, max=64)}}),
    "auto": (Net, _image, lambda: {"x": {0: Dim.AUTO}}),
    "auto_spatial": (Net, _image, lambda: {"x": {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}}),
    "two_inputs": (Masked, lambda: (torch.randn(2, 5, 8), torch.ones(2, 5)),
                   lambda: (lambda b, s: {"x": {0: b, 1: s}, "mask": {0: b, 1: s}})(Dim("b"), Dim("seq", max=128))),
}


def _export(tmp_path: Path, form: str) -> Path:
    make, args, shapes = FORMS[form]
    torch.manual_seed(0)
    program = torch.export.export(make().eval(), args(), dynamic_shapes=shapes())
    path = tmp_path / f"{form}.pt2"
    torch.export.save(program, str(path))
    return path


@pytest.mark.parametrize("form", list(FORMS))
def test_pt2_form_converts_to_onnx_and_runs_at_other_sizes(tmp_path, form):
    import onnxruntime as ort

    from convrepair.convert import convert
    from convrepair.plugins import default_registry

    source = _export(tmp_path, form)
    result = convert(default_registry(), source, "onnx", out=tmp_path / f"{form}.onnx")
    details = result.steps[0].details
    assert details["dynamic_dims"], details
    # a size neither the export nor its proof used: the ONNX file and the program agree
    program = torch.export.load(str(source)).module()
    session = ort.InferenceSession(str(result.output.path), providers=["CPUExecutionProvider"])
    shapes = [list(t.shape) for t in FORMS[form][1]()]
    for shape in shapes:
        shape[0] = 5
    if form == "auto_spatial":
        shapes[0][2:] = [9, 9]
    if form == "two_inputs":
        shapes[0][1] = shapes[1][1] = 7
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    got = session.run(None, {i.name: f for i, f in zip(session.get_inputs(), feeds)})[0]
    want = program(*map(torch.from_numpy, feeds)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_unbounded_dim_range_is_open_not_an_error(tmp_path):
    """`Dim("batch")` without max has the range [0, int_oo]: its max is None, its min a valid size."""
    from convrepair_plugins.torch.runner import exported_dynamic_dims

    dims = exported_dynamic_dims(torch.export.load(str(_export(tmp_path, "unbounded"))))
    (symbol,) = dims.ranges
    assert dims.ranges[symbol] == (1, None)
    assert dims.sizes(lambda _symbol, axis: 3) == [[3, None, None, None]]


def test_cli_converts_the_usual_export(cli, tmp_path):
    """The issue's reproducer: `convert tnet.pt2 --to onnx` on an unbounded batch `Dim` exits 0."""
    source = _export(tmp_path, "unbounded")
    result = cli("convert", source, "--to", "onnx", "--out", tmp_path / "tnet.onnx")
    assert result.code == 0, result.stderr
    assert (tmp_path / "tnet.onnx").is_file()


def test_refused_export_is_exit_2_with_reasons_and_debug_shows_the_worker_traceback(cli, tmp_path):
    """A derived `Dim` read back from a .pt2: the tracer bakes the size in (the proof at a second
    size catches it). That is a refusal: exit 2, one line naming the file and the exporter's
    reason; `--debug` adds the worker's traceback."""
    b, n = Dim("b"), Dim("n", max=64)
    program = torch.export.export(Concat(), (torch.randn(2, 8), torch.randn(2, 4, 2)),
                                  dynamic_shapes={"x": {0: b, 1: 2 * n}, "y": {0: b, 1: n}})
    source = tmp_path / "derived.pt2"
    torch.export.save(program, str(source))
    # the tracer alone (dynamo's failure on it is docs/repro/pt2_derived_dim.py, and slow); one run
    # with --debug: the same exit status and last line as without it, plus the worker's traceback
    debug = cli("--debug", "convert", source, "--to", "onnx", "-O", "exporter=torchscript", "--out", tmp_path / "d.onnx")
    assert debug.code == 2, debug.stderr
    last = debug.stderr.strip().splitlines()[-1]
    assert last.startswith("convrepair: error: ") and "derived.pt2" in last
    assert "torch.onnx cannot export this model" in last and "torchscript exporter" in last
    assert "does not run in ONNX Runtime" in last and "\x1b[" not in last
    assert "plugins/torch/to_onnx.py" in debug.stderr  # the worker's frames, not only the parent's


def test_a_crashing_converter_is_exit_70_with_its_cause(tmp_path):
    """A converter raising anything but a convrepair error is a crash (a bug in it or around it):
    ConversionFailed, exit 70, naming the converter and the cause, also across the worker."""
    from convrepair.contain.worker import run_contained
    from convrepair.convert import convert
    from convrepair.errors import ConversionFailed
    from convrepair.plugins import Plugin, default_registry, discover

    crashing = Plugin(name="crashing", description="a converter with a bug")

    @crashing.converter("onnx-to-crash", sources=["pt2"], target="crash", output_format="onnx")
    def crash(request):
        return {}["missing"]

    registry = discover()
    registry.add(crashing)
    source = _export(tmp_path, "bounded")

    def job(_send):
        return convert(registry, source, "crash", out=tmp_path / "out.onnx").to_json()

    with pytest.raises(ConversionFailed) as caught:
        run_contained(job, reads=[source], writes=[tmp_path])
    assert caught.value.exit_code == 70
    assert "onnx-to-crash" in caught.value.message and "KeyError" in caught.value.message
    assert default_registry() is not registry
