"""Models that carry code are scanned before they run: file, process and network ops are refused
(exit 2, the op named) and the files they target stay untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Builders run in their own interpreter: the test process need not import torch or TensorFlow.
TORCHSCRIPT_WRITER = """
import sys, torch

class Writer(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        mapped = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(65)  # shared=True: writes through to the file
        return x + mapped.sum().float() * 0

torch.jit.script(Writer(sys.argv[2])).save(sys.argv[1])
"""

SAVEDMODEL_WRITER = """
import sys
import tensorflow as tf

class Writer(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 1, 8, 8], tf.float32)])
    def serve(self, x):
        tf.io.write_file(sys.argv[2], "written by the model")
        return {"y": tf.reshape(x, [-1, 64])[:, :10]}

module = Writer()
tf.saved_model.save(module, sys.argv[1], signatures={"serving_default": module.serve})
"""


def build(script: str, *args: Path) -> None:
    """Run a builder from a file (torch.jit.script reads the class's source)."""
    path = Path(args[0]).with_suffix(".build.py")
    path.write_text(textwrap.dedent(script))
    subprocess.run([sys.executable, str(path), *map(str, args)], check=True, capture_output=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


_BUILT: dict[str, Path] = {}


def hostile_models(tmp_path_factory) -> dict[str, Path]:
    """The two writers, built once per test session (test_contain uses them too)."""
    if not _BUILT:
        root = tmp_path_factory.mktemp("writers")
        build(TORCHSCRIPT_WRITER, root / "writer.pt", root / "victim.txt")
        build(SAVEDMODEL_WRITER, root / "writer.savedmodel", root / "created_by_model.txt")
        _BUILT.update(root=root, victim=root / "victim.txt", created=root / "created_by_model.txt",
                      torchscript=root / "writer.pt", savedmodel=root / "writer.savedmodel")
    return _BUILT


@pytest.fixture
def writers(tmp_path_factory) -> dict[str, Path]:
    return hostile_models(tmp_path_factory)


# the CLI refusing these two writers (exit 2, the op named, nothing written) is proven in the
# red-team suite: tests/security/test_redteam_models.py


@pytest.mark.parametrize(("kind", "refused"), [
    ("aten::from_file", True), ("aten::save", True), ("prim::PythonOp", True), ("prim::rpc_async", True),
    ("c10d::allreduce_", True), ("mylib::anything", True), ("aten::_convolution", False), ("prim::If", False),
])
def test_torchscript_operator_policy(kind, refused):
    from convrepair_plugins.torch.scan import refusal

    assert (refusal(kind) is not None) == refused


@pytest.mark.parametrize(("op", "attrs", "refused"), [
    ("ReadFile", {}, True), ("MatchingFiles", {}, True), ("EagerPyFunc", {}, True), ("TFRecordDatasetV2", {}, True),
    ("DebugIdentityV2", {}, True), ("_Send", {}, True), ("ImmutableConst", {}, True),
    ("PrintV2", {"output_stream": b"file:///tmp/x"}, True), ("PrintV2", {"output_stream": b"stderr"}, False),
    ("Conv2D", {}, False), ("MatMul", {}, False), ("StatefulPartitionedCall", {}, False),
])
def test_savedmodel_op_policy(op, attrs, refused):
    from types import SimpleNamespace

    from convrepair_plugins.tensorflow.scan import refusal

    node = SimpleNamespace(op=op, attr={key: SimpleNamespace(s=value) for key, value in attrs.items()})
    assert (refusal(node) is not None) == refused


# --- the pre-load scan of TorchScript code: parsed and resolved, never matched by a pattern ----

BENIGN_CODE = '''class M(Module):
  __parameters__ = []
  training : bool
  def forward(self: __torch__.M,
    x: Tensor) -> Tensor:
    ys = annotate(List[Tensor], [])
    _0 = torch.append(ys, torch.relu(x))
    _1 = getattr(self, "0")
    if torch.__isnot__(x, None):
      ops.prim.RaiseException("AssertionError: bad")
    y = (_1).forward(x, ) + __torch__.torch.nn.functional.relu(x, False, )
    return torch.softmax(torch.stack(ys).view(-1), -1) + float(len(ys)) + x.size(0)
  def __setstate__(self: __torch__.M,
    state: Tuple[int, bool]) -> NoneType:
    self.training = (state)[1]
    return None
'''
FUNCTIONAL = '''def relu(input: Tensor,
    inplace: bool=False) -> Tensor:
  return torch.relu(input)
'''


def _archive(tmp_path, code: str, extra: dict[str, str] | None = None) -> Path:
    import zipfile

    path = tmp_path / "m.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/code/__torch__.py", code)
        archive.writestr("m/code/__torch__/torch/nn/functional.py", FUNCTIONAL)
        for name, text in (extra or {}).items():
            archive.writestr(name, text)
    return path


def test_torchscript_code_the_printer_writes_passes_the_scan(tmp_path):
    from convrepair_plugins.torch.scan import scan_archive

    scan_archive(_archive(tmp_path, BENIGN_CODE))


@pytest.mark.parametrize(("hidden", "named"), [
    # the call the old pattern missed: a comment and a line break between the name and the call
    ('    _m = (torch.from_file  # c\n )("/victim", True, 4)\n', "aten::from_file"),
    ('    f = torch.from_file\n', "aten::from_file"),  # a mention is enough
    ('    _m = torch . save (x, "/victim")\n', "aten::save"),
    ('    _m = ops.mylib.exfiltrate(x)\n', "mylib::exfiltrate"),
    ('    _m = torch.ops.c10d.allreduce_(x)\n', "c10d::allreduce_"),
    ('    _m = torch.classes.mylib.Socket()\n', "custom class"),
    ('    _m = getattr(torch, "from_file")("/victim")\n', "cannot resolve"),
    ('    _m = open("/victim")\n', "open()"),
    ('    _m = [torch.relu][0](x)\n', "cannot resolve"),
    ('    _m = __torch__.elsewhere.run(x)\n', "does not define"),
    ('    _m = x.from_file()\n', "aten::from_file"),
    ('    import os\n', "Import"),
])
def test_a_hidden_call_in_setstate_is_refused_before_loading(tmp_path, hidden, named):
    from convrepair.errors import UnsafeModel
    from convrepair_plugins.torch.scan import scan_archive

    code = BENIGN_CODE.replace("    self.training = (state)[1]\n", hidden + "    self.training = (state)[1]\n")
    with pytest.raises(UnsafeModel, match="TorchScript refused") as refused:
        scan_archive(_archive(tmp_path, code))
    assert named in refused.value.message and "__torch__.py" in refused.value.message


def test_torchscript_code_that_does_not_parse_is_refused(tmp_path):
    from convrepair.errors import UnsafeModel
    from convrepair_plugins.torch.scan import scan_archive

    with pytest.raises(UnsafeModel, match="cannot be parsed"):
        scan_archive(_archive(tmp_path, BENIGN_CODE + "  def (broken\n"))
    with pytest.raises(UnsafeModel, match="cannot be parsed"):  # a coding cookie does not change what we read
        scan_archive(_archive(tmp_path, "# coding: utf-7\n" + BENIGN_CODE + "+AFw-\n"))


def test_zip_members_are_bounded_before_loading(tmp_path):
    """Duplicate names, paths out of the archive and a bomb (megabytes expanding to hundreds)."""
    import warnings
    import zipfile

    from convrepair.contain.archive import check_zip
    from convrepair.errors import UnsafeModel

    twice = tmp_path / "twice.pt"
    with warnings.catch_warnings(), zipfile.ZipFile(twice, "w") as archive:
        warnings.simplefilter("ignore")
        archive.writestr("m/code/__torch__.py", BENIGN_CODE)
        archive.writestr("m/code/__torch__.py", "evil")
    with pytest.raises(UnsafeModel, match="two members named"):
        check_zip(twice)
    climbing = tmp_path / "climbing.keras"
    with zipfile.ZipFile(climbing, "w") as archive:
        archive.writestr("../config.json", "{}")
    with pytest.raises(UnsafeModel, match="outside the archive"):
        check_zip(climbing)
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(80):
                member.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(UnsafeModel, match="model.weights.h5.*zip bomb"):
        check_zip(bomb, ".keras archive")
