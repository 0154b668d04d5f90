"""The zoo bench's baselines, each run as its own process: plain inference of both models (what a
check cannot avoid) and the framework's exporter with nothing of ours around it (what a convert
cannot avoid).

    python bench/zoo_baselines.py infer SOURCE TARGET DATA SAMPLES
    python bench/zoo_baselines.py export SOURCE OUT.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def plain_inference(source: str, target: str, data: str, samples: str) -> None:
    """The baseline: load both models with their frameworks' runners, infer the check's samples once."""
    import numpy as np

    from convrepair.data import batches, feeds_for, load_npz
    from convrepair.model import model_ref
    from convrepair.plugins import default_registry
    from convrepair.sidecar import read_sidecar

    registry = default_registry()
    for path in (source, target):
        ref = model_ref(Path(path), registry)
        with registry.load(ref, read_sidecar(ref.path), device="cpu") as runner:
            dataset = load_npz(Path(data), runner.inputs)
            for start, stop in batches(min(len(dataset), int(samples)), 64):
                runner.run(feeds_for(runner.inputs, dataset, start, stop))
    del np


def exporter_alone(source: str, out: str) -> None:
    """The framework exporter with nothing of ours around it: tf2onnx or torch.onnx (dynamo)."""
    if source.endswith(".keras"):
        import keras
        import tensorflow as tf
        import tf2onnx

        model = keras.saving.load_model(source, safe_mode=True)
        specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
        fn = tf.function(lambda x: model(x, training=False), autograph=False)
        tf2onnx.convert.from_function(fn, input_signature=specs, opset=17, output_path=out)
    else:
        import torch

        program = torch.export.load(source)
        example = tuple(torch.zeros([2 if not str(d).isdigit() else int(d) for d in n.meta["val"].shape],
                                    dtype=n.meta["val"].dtype) for n in program.graph.nodes
                        if n.op == "placeholder" and n.name in program.graph_signature.user_inputs)
        torch.onnx.export(program, example, dynamo=True, opset_version=18).save(out)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    {"infer": plain_inference, "export": exporter_alone}[command](*rest)
