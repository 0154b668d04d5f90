"""A ResNet-18-shaped residual CNN in plain PyTorch (torchvision is not usable here), made alive
like the Keras applications: BatchNorm running statistics calibrated on real photographs, the
classifier spread over the features. Exported with torch.export (.pt2, dynamic batch), NCHW."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.zoo.images import alive_classifier, photo_crops, spread_classifier
from bench.zoo.keras_apps import CALIBRATION_SEED, CLASSES, preprocess, sidecar_numbers
from bench.zoo.manifest import Built, Size, write_model_sidecar


def resnet18(width: int, classes: int):
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            skip = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + skip)

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            stages, cin = [], width
            for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
                stride = 1 if i == 0 else 2
                stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
                cin = cout
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, classes)

        def features(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.avgpool(x).flatten(1)

        def forward(self, x):
            return self.fc(self.features(x))

    return ResNet18()


def calibrate_batchnorm(model, x) -> int:
    """Running mean/var of every BatchNorm2d := the statistics of its input on `x` (one pass)."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for layer in layers:
        layer.momentum = 0.1
    model.eval()
    return len(layers)


def build(out: Path, size: Size) -> Built:
    import torch

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    model = resnet18(size.width, CLASSES)
    nchw = lambda raw: np.ascontiguousarray(preprocess(raw, "torch").transpose(0, 3, 1, 2))  # noqa: E731
    calibration = torch.from_numpy(nchw(photo_crops(64, size.image, seed=CALIBRATION_SEED)))
    calibrated = calibrate_batchnorm(model, calibration)
    with torch.no_grad():
        kernel, bias = spread_classifier(model.features(calibration).numpy(), CLASSES)
        model.fc.weight.copy_(torch.from_numpy(kernel.T.copy()))
        model.fc.bias.copy_(torch.from_numpy(bias))
        x = nchw(photo_crops(size.samples + size.holdout, size.image))
        scores = model(torch.from_numpy(x)).numpy()
    alive = alive_classifier(scores, "resnet18") | {"batchnorm_calibrated": calibrated}
    y = scores.argmax(1).astype(np.int64)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.from_numpy(x[:2]),), dynamic_shapes={"x": {0: batch}})
    path = out / "resnet18.pt2"
    torch.export.save(program, str(path))
    write_model_sidecar(path, "pt2", ["NCHW"], **sidecar_numbers("torch"))
    n = size.samples
    np.savez(out / "resnet18_data.npz", x=x[:n], y=y[:n])
    np.savez(out / "resnet18_holdout.npz", x=x[n:], y=y[n:])
    return Built(name="resnet18", model=path, data=out / "resnet18_data.npz", holdout=out / "resnet18_holdout.npz",
                 layout="NCHW", alive=alive)
