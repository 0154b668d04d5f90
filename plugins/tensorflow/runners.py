"""Recognise and run Keras archives, SavedModel directories and TFLite flatbuffers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convrepair import memory
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
    from convrepair_plugins.tensorflow.scan import scan_keras

    scan_keras(path)  # members bounded before Keras reads one (a weights file of appended zeros)
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
        self._largest = 0  # the largest batch run so far

    def run(self, feeds):
        feeds = conform_feeds(self.inputs, feeds, self.path)
        args = [feeds[spec.name] for spec in self.inputs]
        result = self.model(args[0] if len(args) == 1 else args, training=False)
        values = result if isinstance(result, (list, tuple)) else [result]
        out = {spec.name: v.numpy() for spec, v in zip(self.outputs, values)}
        del result, values
        batch = len(args[0]) if args and getattr(args[0], "ndim", 0) else 0
        if 0 < batch < self._largest:  # the tail of a series: what the batches held goes back (memory.trim)
            memory.trim()
        self._largest = max(self._largest, batch)
        return out


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
    """TFLite interpreter; resizes the batch dimension to each batch it is given.

    A quantized input or output (an integer tensor with a scale, as a full-integer
    `TFLiteConverter` model has) is presented as float32: inputs are quantized with the tensor's
    own scale and zero point before they are set, outputs dequantized after they are read. The
    comparison then sees real numbers on both sides, never raw int8 codes beside probabilities.
    """

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
        self._in_q = [io_quantization(d, path) for d in self._in]
        self._out_q = [io_quantization(d, path) for d in self._out]
        shapes = [_dims(d.get("shape_signature", d["shape"])) for d in self._in]
        resolved = input_layouts(layouts, shapes)
        self.inputs = [TensorSpec(d["name"], shapes[i], _io_dtype(d, q), resolved[i])
                       for i, (d, q) in enumerate(zip(self._in, self._in_q))]
        self.outputs = [
            TensorSpec(d["name"], _dims(d.get("shape_signature", d["shape"])), _io_dtype(d, q))
            for d, q in zip(self._out, self._out_q)
        ]
        self._batch = None
        self.device = "cpu"

    @property
    def quantized_io(self) -> dict[str, dict]:
        """Scale, zero point and integer type of each quantized input and output, by name."""
        return {d["name"]: q.to_json() for d, q in zip([*self._in, *self._out], [*self._in_q, *self._out_q]) if q}

    def run(self, feeds):
        feeds = conform_feeds(self.inputs, feeds, self.path)
        batch = next(iter(feeds.values())).shape[0]
        if batch != self._batch:
            for detail, spec in zip(self._in, self.inputs):
                self.interpreter.resize_tensor_input(detail["index"], [batch, *feeds[spec.name].shape[1:]])
            with stderr_fd_silenced():  # "Created TensorFlow Lite XNNPACK delegate" chatter
                self.interpreter.allocate_tensors()
            self._batch = batch
        for detail, spec, q in zip(self._in, self.inputs, self._in_q):
            value = feeds[spec.name]
            self.interpreter.set_tensor(detail["index"], q.quantize(value) if q else value)
        self.interpreter.invoke()
        out = {}
        for spec, detail, q in zip(self.outputs, self._out, self._out_q):
            value = self.interpreter.get_tensor(detail["index"])
            out[spec.name] = q.dequantize(value) if q else value.copy()
        return out


@dataclass(frozen=True)
class Quantization:
    """An integer I/O tensor's affine map: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int
    dtype: str

    def quantize(self, value: np.ndarray) -> np.ndarray:
        info = np.iinfo(self.dtype)
        codes = np.round(np.asarray(value, dtype=np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(codes, info.min, info.max).astype(self.dtype)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        return ((codes.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)).astype(np.float32)

    def to_json(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}


def io_quantization(detail: dict, path: Path | None = None) -> Quantization | None:
    """The affine map of an interpreter input/output detail; None for a float or plain integer
    tensor (token ids have no scale). Per-axis quantized I/O is refused: no converter writes it."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "iu":
        return None
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), dtype=np.float64)
    zeros = np.asarray(params.get("zero_points", []), dtype=np.int64)
    if scales.size == 0:
        scale, zero = detail.get("quantization", (0.0, 0))
        scales, zeros = np.asarray([scale], dtype=np.float64), np.asarray([zero], dtype=np.int64)
    if scales.size == 0 or not np.any(scales):
        return None
    if scales.size > 1:
        raise BadInput(f"I/O tensor '{detail['name']}' is quantized per axis; only per-tensor I/O quantization is supported", path)
    return Quantization(float(scales[0]), int(zeros[0]) if zeros.size else 0, dtype.name)


def _io_dtype(detail: dict, quantization: Quantization | None) -> str:
    return "float32" if quantization else np.dtype(detail["dtype"]).name


def tflite_precision(path: Path) -> str:
    """What a flatbuffer computes in, from its own tensors: `int8` when any tensor is quantized
    (int8/uint8/int16 codes with a scale: full-integer, or int8 weights only), `fp16` when float16
    weights are dequantized at load, else `fp32`. For a .tflite that came without a sidecar; the
    file is parsed, not loaded (the parent process asks this before any model runs)."""
    from convrepair_plugins.tensorflow.flatbuffer import tensor_kinds

    kinds = tensor_kinds(path)
    return "int8" if "quantized" in kinds else "fp16" if "float16" in kinds else "fp32"


@PLUGIN.format("tflite", description="TensorFlow Lite flatbuffer (.tflite)", suffix=".tflite", detect=is_tflite,
                precision=tflite_precision)
def load_tflite(request: LoadRequest) -> Runner:
    return TFLiteRunner(request.ref.path, request.declared_layouts)
