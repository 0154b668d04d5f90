"""Input gradients of Keras models with tf.GradientTape, for the robustness lens."""

from __future__ import annotations

import numpy as np

from convrepair.model import Differentiable
from convrepair.plugins import LoadRequest
from convrepair_plugins.tensorflow import PLUGIN


class KerasDifferentiable(Differentiable):
    def __init__(self, model, inputs):
        self.model, self.inputs, self.via = model, inputs, "keras"

    def loss_gradient(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        from convrepair.lenses.scores import looks_like_probabilities

        batch = tf.convert_to_tensor(np.ascontiguousarray(x, dtype=np.float32))
        with tf.GradientTape() as tape:
            tape.watch(batch)
            scores = self.model(batch, training=False)
            if isinstance(scores, (list, tuple)):
                scores = scores[0]
            values = scores.numpy()
            log_p = tf.math.log(tf.maximum(scores, 1e-12)) if looks_like_probabilities(values) else tf.nn.log_softmax(scores, axis=1)
            # sum, not mean: one sample's gradient must not depend on the batch it came in
            loss = -tf.reduce_sum(tf.gather(log_p, np.asarray(labels, dtype=np.int64), axis=1, batch_dims=1))
        return tape.gradient(loss, batch).numpy(), values


@PLUGIN.gradient("keras")
def keras_gradients(request: LoadRequest) -> Differentiable:
    from convrepair_plugins.tensorflow.runners import load_keras

    runner = load_keras(request)
    return KerasDifferentiable(runner.model, runner.inputs)
