"""Recognise and run Keras archives, SavedModel directories and TFLite flatbuffers."""

from __future__ import annotations

from pathlib import Path

from convrepair.errors import BadInput, exception_text
from convrepair.model import Runner, TensorSpec, conform_feeds, input_layouts, zip_members
from convrepair.plugins import LoadRequest
from convrepair_plugins.tensorflow import PLUGIN
from convrepair_plugins.tensorflow.quiet import import_tensorflow, quiet, stderr_fd_silenced


def is_keras(path: Path) -> bool:
    members = set(zip_members(path)) if path.is_file() else set()
    return {"config.json", "metadata.json"} <= members


def is_savedmodel(path: Path) -> bool:
    return path.is_dir() and ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file())


def is_tflite(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(8)
    return len(head) == 8 and head[4:8] == b"TFL3"  # flatbuffer file identifier


def _dims(shape) -> tuple[int | None, ...]:
    return tuple(None if d is None or (isinstance(d, int) and d < 0) else int(d) for d in shape)


def load_keras_model(path: Path):
    """Keras with safe_mode=True: a Lambda layer's pickled code is refused, not run."""
    import_tensorflow()
    import keras

    try:
        with quiet():
            return keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001
        text = exception_text(exc, 200)
        raise BadInput(f"is not a loadable Keras model (safe mode): {text}", path) from None


class KerasRunner(Runner):
    def __init__(self, path: Path, model, layouts: list[str]):
        self.path, self.model = path, model
        self.inputs = [
            TensorSpec(t.name, _dims(t.shape), str(t.dtype), layouts[i]) for i, t in enumerate(model.inputs)
        ]
        self.outputs = [TensorSpec(f"output_{i}", _dims(t.shape), str(t.dtype)) for i, t in enumerate(model.outputs)]
        self.device = "cpu"

    def run(self, feeds):
        feeds = conform_feeds(self.inputs, feeds, self.path)
        args = [feeds[spec.name] for spec in self.inputs]
        result = self.model(args[0] if len(args) == 1 else args, training=False)
        values = result if isinstance(result, (list, tuple)) else [result]
        return {spec.name: v.numpy() for spec, v in zip(self.outputs, values)}


@PLUGIN.format("keras", description="Keras 3 archive (.keras)", suffix=".keras", detect=is_keras)
def load_keras(request: LoadRequest) -> Runner:
    model = load_keras_model(request.ref.path)
    layouts = request.input_layouts([_dims(t.shape) for t in model.inputs])
    return KerasRunner(request.ref.path, model, layouts)


def load_serving_signature(path: Path):
    from convrepair.contain import guard_code_format
    from convrepair_plugins.tensorflow.scan import scan_savedmodel

    tf = import_tensorflow()
    guard_code_format("savedmodel", path)
    scan_savedmodel(path)  # loading runs initializers: refuse before that
    try:
        with quiet():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        text = exception_text(exc, 200)
        raise BadInput(f"is not a loadable SavedModel: {text}", path) from None
    if "serving_default" not in loaded.signatures:
        raise BadInput(f"SavedModel has no 'serving_default' signature (has {list(loaded.signatures)})", path)
    return loaded, loaded.signatures["serving_default"]


class SavedModelRunner(Runner):
    def __init__(self, path: Path, loaded, signature, layouts: list[str]):
        self.path, self._loaded, self.signature = path, loaded, signature
        specs = signature.structured_input_signature[1]
        self.inputs = [
            TensorSpec(name, _dims(spec.shape), spec.dtype.name, layouts[i]) for i, (name, spec) in enumerate(specs.items())
        ]
        outs = signature.structured_outputs
        self.outputs = [TensorSpec(name, _dims(spec.shape), spec.dtype.name) for name, spec in outs.items()]
        self.device = "cpu"

    def run(self, feeds):
        tf = import_tensorflow()

        feeds = conform_feeds(self.inputs, feeds, self.path)
        result = self.signature(**{name: tf.constant(value) for name, value in feeds.items()})
        return {spec.name: result[spec.name].numpy() for spec in self.outputs}


@PLUGIN.format("savedmodel", description="TensorFlow SavedModel (directory)", suffix=".savedmodel", detect=is_savedmodel)
def load_savedmodel(request: LoadRequest) -> Runner:
    loaded, signature = load_serving_signature(request.ref.path)
    shapes = [_dims(s.shape) for s in signature.structured_input_signature[1].values()]
    return SavedModelRunner(request.ref.path, loaded, signature, request.input_layouts(shapes))


class TFLiteRunner(Runner):
    """TFLite interpreter; resizes the batch dimension to each batch it is given."""

    def __init__(self, path: Path, layouts: list[str]):
        tf = import_tensorflow()

        self.path = path
        try:
            with quiet():
                self.interpreter = tf.lite.Interpreter(model_path=str(path))
        except Exception as exc:  # noqa: BLE001
            text = exception_text(exc, 200)
            raise BadInput(f"is not a loadable TFLite model: {text}", path) from None
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        shapes = [_dims(d.get("shape_signature", d["shape"])) for d in self._in]
        resolved = input_layouts(layouts, shapes)
        self.inputs = [TensorSpec(d["name"], shapes[i], d["dtype"].__name__, resolved[i]) for i, d in enumerate(self._in)]
        self.outputs = [
            TensorSpec(d["name"], _dims(d.get("shape_signature", d["shape"])), d["dtype"].__name__) for d in self._out
        ]
        self._batch = None
        self.device = "cpu"

    def run(self, feeds):
        feeds = conform_feeds(self.inputs, feeds, self.path)
        batch = next(iter(feeds.values())).shape[0]
        if batch != self._batch:
            for detail, spec in zip(self._in, self.inputs):
                self.interpreter.resize_tensor_input(detail["index"], [batch, *feeds[spec.name].shape[1:]])
            with stderr_fd_silenced():  # "Created TensorFlow Lite XNNPACK delegate" chatter
                self.interpreter.allocate_tensors()
            self._batch = batch
        for detail, spec in zip(self._in, self.inputs):
            self.interpreter.set_tensor(detail["index"], feeds[spec.name])
        self.interpreter.invoke()
        return {spec.name: self.interpreter.get_tensor(d["index"]).copy() for spec, d in zip(self.outputs, self._out)}


@PLUGIN.format("tflite", description="TensorFlow Lite flatbuffer (.tflite)", suffix=".tflite", detect=is_tflite)
def load_tflite(request: LoadRequest) -> Runner:
    return TFLiteRunner(request.ref.path, request.declared_layouts)
