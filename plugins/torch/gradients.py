"""Input gradients in PyTorch: exported programs, TorchScript, and ONNX models through onnx2torch.

The robustness lens crafts FGSM/PGD inputs with these. An ONNX model has no gradients of its own;
onnx2torch rebuilds it as a torch module, which is what the lens differentiates (and says so).
"""

from __future__ import annotations

import numpy as np

from convrepair.model import Differentiable, TensorSpec
from convrepair.plugins import LoadRequest
from convrepair_plugins.torch import PLUGIN


class TorchDifferentiable(Differentiable):
    def __init__(self, module, inputs: list[TensorSpec], device: str, via: str):
        self.module, self.inputs, self.device, self.via = module, inputs, device, via

    def loss_gradient(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device).requires_grad_(True)
        scores = self.module(batch)
        while isinstance(scores, (list, tuple)):
            scores = scores[0]
        target = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        # sum, not mean: one sample's gradient must not depend on the batch it came in
        loss = torch.nn.functional.nll_loss(_log_probabilities(scores), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, batch)
        return grad.detach().cpu().numpy(), scores.detach().cpu().numpy()


def _log_probabilities(scores):
    """Log-softmax of logits; the log of probabilities when the model ends in a softmax."""
    import torch

    from convrepair.lenses.scores import looks_like_probabilities

    if looks_like_probabilities(scores.detach().cpu().numpy()):
        return torch.log(scores.clamp_min(1e-12))
    return torch.log_softmax(scores, dim=1)


@PLUGIN.gradient("pt2", "torchscript")
def torch_gradients(request: LoadRequest) -> Differentiable:
    from convrepair_plugins.torch.runner import load_pt2, load_torchscript_model

    runner = (load_pt2 if request.ref.format == "pt2" else load_torchscript_model)(request)
    return TorchDifferentiable(runner.torch_module, runner.inputs, runner.device, via=request.ref.format)


@PLUGIN.gradient("onnx")
def onnx_gradients(request: LoadRequest) -> Differentiable:
    from convrepair_plugins.onnx.fold_shapes import fold_reshape_shapes
    from convrepair_plugins.onnx.runner import load_onnx_model
    from convrepair_plugins.torch.from_onnx import graph_inputs, import_onnx2torch
    from convrepair_plugins.torch.runner import pick_device

    model, _ = fold_reshape_shapes(load_onnx_model(request.ref.path))
    module = import_onnx2torch().convert(model).eval()
    raw = graph_inputs(model)
    layouts = request.input_layouts([shape for _, shape in raw])
    inputs = [TensorSpec(name, shape, "float32", layouts[i]) for i, (name, shape) in enumerate(raw)]
    device = pick_device(request.device)
    return TorchDifferentiable(module.to(device), inputs, device, via="onnx2torch")
