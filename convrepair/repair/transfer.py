"""Carry a repair made on a model's ONNX IR back into its own format (PyTorch programs, Keras).

Restores and patches work on the ONNX IR that localization compared. For a `.pt2` or `.keras`
target, each initializer the repair changed is found among the model's own tensors by its *old*
values (through the layout change the exporter made: a 2-D transpose, ONNX OIHW vs Keras HWIO)
and overwritten with the new ones. Graph changes (attributes, inserted ops) cannot be carried
into a model's weights: those are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from convrepair.repair.restore import RestoreUnavailable


def changed_initializers(before, after) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Initializers whose values a repair changed: {name: (old, new)}. A lost parameter the repair
    gave back (a node that only gained inputs, fed by new initializers) counts as changed from
    zeros, which is what the model's own tensor holds; any other graph change is refused."""
    from onnx import numpy_helper

    old = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    refused = RestoreUnavailable("the repair changed the graph itself (attributes or ops), which the model's weights "
                                 "cannot carry; repair the ONNX conversion instead")
    if len(before.graph.node) != len(after.graph.node) or set(old) - set(new):
        raise refused
    added: set[str] = set()
    for b, a in zip(before.graph.node, after.graph.node):
        if b.SerializeToString() == a.SerializeToString():
            continue
        extra = list(a.input)[len(b.input):]
        same_otherwise = list(a.input)[: len(b.input)] == list(b.input) and a.op_type == b.op_type and \
            list(a.output) == list(b.output) and list(a.attribute) == list(b.attribute)
        if not same_otherwise or not extra or not all(name in new and name not in old for name in extra if name):
            raise refused
        added.update(name for name in extra if name)
    if set(new) - set(old) - added:
        raise refused
    changes = {name: (old[name], new[name]) for name in old if not np.array_equal(old[name], new[name])}
    changes.update({name: (np.zeros_like(new[name]), new[name]) for name in added})
    return changes


#: (name, to the model's layout, back to ONNX's) for the layouts an exporter may have changed
_LAYOUTS = (
    ("as is", lambda a: a, lambda a: a),
    ("transposed", lambda a: a.T if a.ndim == 2 else None, lambda a: a.T),
    ("OIHW→HWIO", lambda a: a.transpose(2, 3, 1, 0) if a.ndim == 4 else None, lambda a: a.transpose(3, 2, 0, 1)),
)


def _match(name: str, old: np.ndarray, tensors: dict[str, np.ndarray]) -> tuple[str, Callable]:
    """The one tensor holding `old` (in some layout) and how to bring new values into it."""
    matches = []
    for key, value in tensors.items():
        for _, to_model, _ in _LAYOUTS:
            candidate = to_model(old)
            if candidate is not None and value.shape == candidate.shape and np.allclose(value, candidate, atol=1e-6):
                matches.append((key, to_model))
                break
    if len({key for key, _ in matches}) != 1:
        raise RestoreUnavailable(f"cannot tell which tensor of the model holds '{name}' "
                                 f"({len(matches)} candidates with its values)")
    return matches[0]


def transfer_to_pt2(changes: dict[str, tuple[np.ndarray, np.ndarray]], pt2: Path, out: Path) -> list[str]:
    """Write `pt2` with the changed tensors replaced to `out`; the program's names that changed."""
    import torch

    from convrepair_plugins.torch.safe_load import load_exported_program

    program = load_exported_program(pt2)
    tensors = {k: t for k, t in {**dict(program.state_dict), **dict(program.constants)}.items() if isinstance(t, torch.Tensor)}
    values = {k: t.detach().cpu().numpy() for k, t in tensors.items()}
    written = []
    for name, (old, new) in changes.items():
        key, to_model = _match(name, old, values)
        with torch.no_grad():
            tensors[key].copy_(torch.from_numpy(np.array(to_model(new), copy=True)).to(tensors[key].dtype))
        written.append(key)
    torch.export.save(program, str(out))
    return written


def transfer_to_keras(changes: dict[str, tuple[np.ndarray, np.ndarray]], keras_path: Path, out: Path) -> list[str]:
    """Write the Keras model with the changed weights replaced to `out` (a .keras archive)."""
    from convrepair_plugins.tensorflow.runners import load_keras_model

    model = load_keras_model(keras_path)  # safe mode
    variables = {v.path: v for v in model.weights}
    values = {k: np.asarray(v.numpy()) for k, v in variables.items()}
    written = []
    for name, (old, new) in changes.items():
        key, to_model = _match(name, old, values)
        variables[key].assign(np.array(to_model(new), dtype=values[key].dtype))
        written.append(key)
    model.save(str(out))
    return written


#: formats a repair made on the ONNX IR can be carried back into, and the suffix each is written with
CARRIERS: dict[str, tuple[Callable, str]] = {"pt2": (transfer_to_pt2, ".pt2"), "keras": (transfer_to_keras, ".keras")}


def carry_back(ir_before: Path, ir_after: Path, target: Path, target_format: str, out_dir: Path) -> tuple[Path, list[str], int]:
    """The target in its own format with the IR's changed parameters written in:
    (path, names written, values changed). Raises RestoreUnavailable when it cannot be done."""
    import onnx

    if target_format not in CARRIERS:
        raise RestoreUnavailable(f"repairs are carried back into {', '.join(CARRIERS)} models; this one is {target_format}")
    transfer, suffix = CARRIERS[target_format]
    changes = changed_initializers(onnx.load(str(ir_before)), onnx.load(str(ir_after)))
    out = Path(out_dir) / f"{Path(ir_after).stem}.carried{suffix}"
    names = transfer(changes, Path(target), out)
    return out, names, sum(int(new.size) for _, new in changes.values())


def carry_patch(ir_before: Path, ir_after: Path, target: Path, target_format: str, out_dir: Path, patch) -> Path:
    """`carry_back` for a patch found on the IR: the patch's detail says where it was written."""
    path, names, _ = carry_back(ir_before, ir_after, target, target_format, out_dir)
    patch.detail += f"; written into the {target_format} model's {', '.join(names)}"
    return path
