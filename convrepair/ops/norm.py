"""Normalizations. BatchNorm's momentum only matters in training; LayerNorm's stash_type is the
precision it computes in, not what it computes."""

from __future__ import annotations

from convrepair.ops.registry import ATTRIBUTES, BIASES, MEAN, PARAMETERS, SCALE, VARIANCE, op

_RESTORES = PARAMETERS | ATTRIBUTES


@op("BatchNormalization", kind="norm", roles={1: SCALE, 2: BIASES, 3: MEAN, 4: VARIANCE},
    inert=frozenset({"momentum", "spatial", "is_test", "consumed_inputs"}), restores=_RESTORES)
@op("InstanceNormalization", kind="norm", roles={1: SCALE, 2: BIASES}, restores=_RESTORES)
@op("LayerNormalization", kind="norm", roles={1: SCALE, 2: BIASES}, inert=frozenset({"stash_type"}), restores=_RESTORES)
def normalization(node, constant) -> dict:
    return {}
