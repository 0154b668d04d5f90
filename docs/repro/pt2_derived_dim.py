"""torch 2.13.0: a .pt2 with a derived Dim decomposes in memory but not after save/load.

Expected: both print "ok". Observed: the loaded program fails with
`AssertionError: expected sympy.Symbol` (its range_constraints keep the derived key `2*s`),
so `torch.onnx.export(program, dynamo=True)` fails on it too.
"""

import os
import tempfile

import torch
from torch.export import Dim


class Cat(torch.nn.Module):
    def forward(self, x, y):
        return torch.cat([x, y.reshape(x.shape[0], -1)], 1)


b, n = Dim("b"), Dim("n", max=64)
program = torch.export.export(Cat(), (torch.randn(2, 8), torch.randn(2, 4, 2)),
                              dynamic_shapes={"x": {0: b, 1: 2 * n}, "y": {0: b, 1: n}})
program.run_decompositions()
print("in memory: ok")
path = os.path.join(tempfile.mkdtemp(), "derived.pt2")
torch.export.save(program, path)
loaded = torch.export.load(path)
print("loaded range_constraints:", loaded.range_constraints)
loaded.run_decompositions()  # AssertionError: expected sympy.Symbol
print("loaded: ok")
