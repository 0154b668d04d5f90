"""onnx2torch imports torchvision; a broken torchvision must only stop models that need it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    fake = tmp_path / "fake_site" / "torchvision"
    fake.mkdir(parents=True)
    # Stands in for a CUDA torchvision wheel beside CPU torch: importing it raises.
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    env_path = f"{tmp_path / 'fake_site'}"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": env_path},
    )


def test_onnx2torch_imports_with_a_broken_torchvision(tmp_path):
    result = _run(
        """
        from convrepair_plugins.torch.from_onnx import import_onnx2torch
        import sys
        module = import_onnx2torch()
        assert module.convert is not None
        assert 'torchvision' not in sys.modules, 'placeholder leaked'
        print('OK')
        """,
        tmp_path,
    )
    assert "OK" in result.stdout, result.stderr


def test_model_needing_nms_gets_a_clear_error(tmp_path):
    result = _run(
        f"""
        import onnx
        from onnx import TensorProto, helper
        from pathlib import Path
        boxes = helper.make_tensor_value_info('boxes', TensorProto.FLOAT, [1, 4, 4])
        scores = helper.make_tensor_value_info('scores', TensorProto.FLOAT, [1, 1, 4])
        out = helper.make_tensor_value_info('selected', TensorProto.INT64, [None, 3])
        node = helper.make_node('NonMaxSuppression', ['boxes', 'scores'], ['selected'], name='nms')
        model = helper.make_model(helper.make_graph([node], 'g', [boxes, scores], [out]),
                                  opset_imports=[helper.make_opsetid('', 13)])
        path = Path(r'{tmp_path}') / 'nms.onnx'
        onnx.save(model, path)
        from convrepair.convert import convert
        from convrepair.errors import BadInput
        from convrepair.plugins import default_registry
        try:
            convert(default_registry(), path, 'torch')
        except BadInput as exc:
            print('ERROR', exc.one_line())
        """,
        tmp_path,
    )
    assert "ERROR" in result.stdout, result.stderr
    assert "NonMaxSuppression" in result.stdout and "torchvision" in result.stdout
