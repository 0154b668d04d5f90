"""Keras applications (MobileNetV2, ResNet50, DenseNet121, InceptionV3) built offline and made alive.

`weights=None` gives random weights whose outputs do not depend on the input (every class 0.001).
Two steps make them behave like trained models: every BatchNormalization's moving statistics are
calibrated on real photographs (one training-mode pass with momentum 0, so each layer sees
normalized inputs), and the classifier is spread (a projection of the standardized features whose
logits vary across samples). `alive_classifier` asserts the result before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.zoo.images import alive_classifier, photo_crops, spread_classifier
from bench.zoo.manifest import Built, Size, write_model_sidecar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

CLASSES = 1000
CALIBRATION_SEED = 1
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
TORCH_MEAN, TORCH_STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

# name: (keras.applications constructor, preprocessing mode)
APPLICATIONS = {
    "mobilenetv2": ("MobileNetV2", "tf"),
    "resnet50": ("ResNet50", "caffe"),
    "densenet121": ("DenseNet121", "torch"),
    "inceptionv3": ("InceptionV3", "tf"),
}


def preprocess(raw: np.ndarray, mode: str) -> np.ndarray:
    """uint8 RGB -> the model's input, as keras.applications' preprocess_input does for `mode`."""
    x = raw.astype(np.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    return (x / 255.0 - TORCH_MEAN) / TORCH_STD


def sidecar_numbers(mode: str) -> dict:
    """Preprocessing as the sidecar records it (scale/offset are the channel average where the
    mode normalizes each channel differently; input_range is exact)."""
    if mode == "tf":
        return {"scale": 1 / 127.5, "offset": -1.0, "channel_order": "RGB", "input_range": (-1.0, 1.0)}
    if mode == "caffe":
        return {"scale": 1.0, "offset": -float(CAFFE_MEAN_BGR.mean()), "channel_order": "BGR",
                "input_range": (-float(CAFFE_MEAN_BGR.max()), float(255.0 - CAFFE_MEAN_BGR.min()))}
    low, high = (0 - TORCH_MEAN) / TORCH_STD, (1 - TORCH_MEAN) / TORCH_STD
    return {"scale": float(1 / (255 * TORCH_STD.mean())), "offset": -float((TORCH_MEAN / TORCH_STD).mean()),
            "channel_order": "RGB", "input_range": (float(low.min()), float(high.max()))}


def calibrate_batchnorm(model, x: np.ndarray) -> int:
    """Moving mean/variance of every BatchNormalization := the statistics of its input on `x`."""
    import keras

    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(layers, saved):
        layer.momentum = momentum
    return len(layers)


def build_application(name: str, out: Path, size: Size) -> Built:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    constructor, mode = APPLICATIONS[name]
    model = getattr(keras.applications, constructor)(
        weights=None, input_shape=(size.image, size.image, 3), classes=CLASSES
    )
    calibration = preprocess(photo_crops(64, size.image, seed=CALIBRATION_SEED), mode)
    calibrated = calibrate_batchnorm(model, calibration)
    head = model.get_layer("predictions")
    features = keras.Model(model.input, head.input)(calibration, training=False)
    kernel, bias = spread_classifier(np.asarray(features), CLASSES)
    head.set_weights([kernel, bias])

    x = preprocess(photo_crops(size.samples + size.holdout, size.image), mode)
    scores = np.concatenate([np.asarray(model(x[i : i + 16], training=False)) for i in range(0, len(x), 16)])
    alive = alive_classifier(scores, name) | {"batchnorm_calibrated": calibrated}
    y = scores.argmax(1).astype(np.int64)  # the source model's own labels

    path = out / f"{name}.keras"
    model.save(path)
    write_model_sidecar(path, "keras", ["NHWC"], **sidecar_numbers(mode))
    n = size.samples
    np.savez(out / f"{name}_data.npz", x=x[:n], y=y[:n])
    np.savez(out / f"{name}_holdout.npz", x=x[n:], y=y[n:])
    return Built(name=name, model=path, data=out / f"{name}_data.npz", holdout=out / f"{name}_holdout.npz",
                 layout="NHWC", alive=alive)


def build_mobilenetv2(out: Path, size: Size) -> Built:
    return build_application("mobilenetv2", out, size)


def build_resnet50(out: Path, size: Size) -> Built:
    return build_application("resnet50", out, size)


def build_densenet121(out: Path, size: Size) -> Built:
    return build_application("densenet121", out, size)


def build_inceptionv3(out: Path, size: Size) -> Built:
    return build_application("inceptionv3", out, size)
