"""The zoo's manifest: every model family, its builder, its sizes and the routes it must survive.

Importing this module is cheap (no framework): builders are named as "module:function" and
imported only when a model is built. One small module per family registers nothing itself;
adding a model means adding one `ZooModel` line here and its builder module.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Size:
    """How big a built model and its data are: CI sizes keep `make test` short."""

    image: int = 96          # image side in pixels (image models)
    samples: int = 48        # samples in the data file (check, localization, repair)
    holdout: int = 32        # further samples for held-out judgement
    width: int = 64          # base width (the torch residual CNN)
    sequence: int = 32       # token sequence length (transformers)


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str                       # keras | torch | transformer
    builder: str                      # "module:function(out: Path, size: Size) -> Built"
    fp32_routes: tuple[str, ...]      # conversions that must be `equivalent`
    lossy_routes: tuple[str, ...]     # conversions that change precision (fp16, int8)
    sizes: dict[str, Size] = field(default_factory=dict)

    def build(self, out: Path, size: str) -> Built:
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(module), function)(out, self.sizes[size])


@dataclass
class Built:
    """What a builder wrote: the model (with its sidecar), its data, and proof that it is alive."""

    name: str
    model: Path
    data: Path
    holdout: Path
    layout: str
    alive: dict[str, Any]
    output: str = "classifier"        # classifier | embedding
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("model", "data", "holdout"):
            out[key] = Path(out[key]).name
        return out


KERAS_ROUTES = ("onnx", "torch", "tflite")
KERAS_LOSSY = ("onnx-fp16", "onnx-int8")
TORCH_ROUTES = ("onnx", "torch")
TORCH_LOSSY = ("onnx-fp16", "onnx-int8")

ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel("mobilenetv2", "keras", "bench.zoo.keras_apps:build_mobilenetv2", KERAS_ROUTES, KERAS_LOSSY,
                 {"ci": Size(image=96, samples=48, holdout=32), "full": Size(image=224, samples=200, holdout=100)}),
        ZooModel("resnet50", "keras", "bench.zoo.keras_apps:build_resnet50", KERAS_ROUTES, KERAS_LOSSY,
                 {"ci": Size(image=64, samples=48, holdout=32), "full": Size(image=224, samples=200, holdout=100)}),
        ZooModel("densenet121", "keras", "bench.zoo.keras_apps:build_densenet121", KERAS_ROUTES, KERAS_LOSSY,
                 {"ci": Size(image=64, samples=48, holdout=32), "full": Size(image=224, samples=200, holdout=100)}),
        ZooModel("inceptionv3", "keras", "bench.zoo.keras_apps:build_inceptionv3", KERAS_ROUTES, KERAS_LOSSY,
                 {"ci": Size(image=96, samples=48, holdout=32), "full": Size(image=299, samples=200, holdout=100)}),
        ZooModel("resnet18", "torch", "bench.zoo.resnet_torch:build", TORCH_ROUTES, TORCH_LOSSY,
                 {"ci": Size(image=64, samples=48, holdout=32, width=16), "full": Size(image=224, samples=200, holdout=100, width=64)}),
        ZooModel("minilm", "transformer", "bench.zoo.minilm:build", ("onnx",), ("onnx-fp16", "onnx-int8"),
                 {"ci": Size(samples=48, holdout=32, sequence=32), "full": Size(samples=200, holdout=100, sequence=128)}),
    ]
}

CI_ZOO = ("mobilenetv2", "resnet18", "minilm")  # what tests/test_zoo.py builds

# Built only when named (`build.py --only bert_large`): not in ZOO, so no default build, bench or
# test pays for a 335M-parameter model (1.3 GB .pt2). bench/large_model_bench.py measures it.
LARGE_ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel("bert_large", "transformer", "bench.zoo.bert_large:build", ("onnx",), (),
                 {"ci": Size(samples=16, holdout=8, sequence=128), "full": Size(samples=96, holdout=32, sequence=128)}),
    ]
}
ALL_ZOO: dict[str, ZooModel] = ZOO | LARGE_ZOO


def write_model_sidecar(model: Path, fmt: str, layouts: list[str], input_range: tuple[float, float],
                        channel_order: str | None, scale: float = 1.0, offset: float = 0.0,
                        labels: list[str] | None = None) -> Path:
    """A source model's sidecar: its layout and the range its inputs live in."""
    from convrepair.fsutil import combined_digest, file_digests
    from convrepair.sidecar import Preprocessing, Sidecar, write_sidecar

    digests = file_digests(model)
    ref = {"path": model.name, "format": fmt, "sha256": combined_digest(digests), "files": digests}
    pre = Preprocessing(scale=scale, offset=offset, channel_order=channel_order,
                        input_range=(float(input_range[0]), float(input_range[1])))
    return write_sidecar(model, Sidecar(source=ref, output=ref, input_layout=layouts, preprocessing=pre, labels=labels))
