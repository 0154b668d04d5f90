"""PyTorch models: exported programs (.pt2) and TorchScript (.pt); torch.onnx and onnx2torch converters."""

from convrepair.plugins import Plugin

PLUGIN = Plugin(
    name="torch",
    description="PyTorch exported programs and TorchScript; torch.onnx export, onnx2torch import",
    requires=("torch",),
)

from convrepair_plugins.torch import from_onnx, gradients, runner, to_onnx  # noqa: E402,F401  (registration)
