"""ExecuTorch programs (.pte): PyTorch exported programs lowered to the XNNPACK delegate, run by
ExecuTorch's Python runtime on the CPU."""

from convrepair.plugins import Plugin

PLUGIN = Plugin(
    name="executorch",
    description="ExecuTorch programs (.pte) with the XNNPACK delegate; torch.export -> to_edge -> ExecuTorch",
    requires=("executorch", "torch"),
)

from convrepair_plugins.executorch import runner, to_pte  # noqa: E402,F401  (registration)
