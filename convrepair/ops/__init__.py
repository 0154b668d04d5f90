"""What localization and repair know about ONNX ops, one small module per op family.

Importing this package registers every family; `spec(op, domain, opset)` answers for an op at
the opset a graph imports. See docs/OPS.md for adding a family.
"""

from __future__ import annotations

from convrepair.ops import activation, arithmetic, conv, dense, norm, pool, precision, resize, shape, softmax  # noqa: F401 - registration
from convrepair.ops.registry import (  # noqa: F401 - the package's API
    BIASES,
    WEIGHTS,
    OpSpec,
    PerAxis,
    attribute_defaults,
    effective_attributes,
    kind_of,
    op,
    ops_where,
    registered,
    same_attribute,
    shown,
    spec,
)
