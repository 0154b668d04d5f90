"""Carry a repair made on a model's ONNX IR back into its own format (PyTorch exported programs).

Restores work on the ONNX IR that localization compared. For a `.pt2` target, each initializer
the repair changed is found among the program's parameters and constants by its *old* values
(through a transpose where the exporter transposed it) and overwritten with the new ones. Graph
changes (attributes, inserted ops) cannot be carried into a program's weights: those are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convrepair.repair.restore import RestoreUnavailable


def changed_initializers(before, after) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from onnx import numpy_helper

    old = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    if [n.SerializeToString() for n in before.graph.node] != [n.SerializeToString() for n in after.graph.node] or set(old) != set(new):
        raise RestoreUnavailable("the repair changed the graph itself (attributes or ops), which a .pt2 program's "
                                 "weights cannot carry; repair the ONNX conversion instead")
    return {name: (old[name], new[name]) for name in old if not np.array_equal(old[name], new[name])}


def transfer_to_pt2(changes: dict[str, tuple[np.ndarray, np.ndarray]], pt2: Path, out: Path) -> list[str]:
    """Write `pt2` with the changed tensors replaced to `out`; the program's names that changed."""
    import torch

    from convrepair_plugins.torch.safe_load import load_exported_program

    program = load_exported_program(pt2)
    tensors = {**dict(program.state_dict), **dict(program.constants)}
    written = []
    for name, (old, new) in changes.items():
        matches = []
        for key, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                continue
            value = tensor.detach().cpu().numpy()
            for candidate, layout in ((old, None), (old.T if old.ndim == 2 else None, "T")):
                if candidate is not None and value.shape == candidate.shape and np.allclose(value, candidate, atol=1e-6):
                    matches.append((key, layout))
        if len({key for key, _ in matches}) != 1:
            raise RestoreUnavailable(f"cannot tell which parameter of the program holds '{name}' "
                                     f"({len(matches)} candidates with its values)")
        key, layout = matches[0]
        values = new.T if layout == "T" else new
        with torch.no_grad():
            tensors[key].copy_(torch.from_numpy(np.array(values, copy=True)).to(tensors[key].dtype))
        written.append(key)
    torch.export.save(program, str(out))
    return written
