"""Recognise an OpenVINO IR and run it with the OpenVINO runtime on CPU.

The IR is read as the folder that holds one `*.xml` (the graph) and its `*.bin` (the weights): a
lone `.xml` names only half the model, so its hash and the worker's read grant would miss the
weights. A lone `.xml` is recognised, and refused with what to pass instead.
The CPU plugin is asked for f32 inference: left to itself it may run bf16 on CPUs that have it
(AMX), and a check must know the precision it judges.
"""

from __future__ import annotations

from pathlib import Path

from convrepair.errors import BadInput, exception_text
from convrepair.model import Runner, TensorSpec, conform_feeds, input_layouts
from convrepair.plugins import LoadRequest
from convrepair_plugins.openvino import PLUGIN

CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
_OV_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64", "i32": "int32",
              "i8": "int8", "u8": "uint8", "boolean": "bool"}


def _is_ir_xml(path: Path) -> bool:
    if not path.is_file() or path.suffix != ".xml":
        return False
    with open(path, "rb") as handle:
        head = handle.read(512)
    return b"<net " in head


def ir_xml(folder: Path) -> Path | None:
    """The one IR graph in `folder` whose weights lie beside it, or None."""
    found = [p for p in sorted(folder.glob("*.xml")) if _is_ir_xml(p) and p.with_suffix(".bin").is_file()]
    return found[0] if len(found) == 1 else None


def is_openvino(path: Path) -> bool:
    return (path.is_dir() and ir_xml(path) is not None) or _is_ir_xml(path)


class OpenVinoRunner(Runner):
    runtime_name = "OpenVINO"

    def __init__(self, path: Path, layouts: list[str]):
        import openvino as ov

        xml = ir_xml(path) if path.is_dir() else None
        if xml is None:
            raise BadInput("is half of an OpenVINO IR: pass the folder that holds the .xml and its .bin "
                           "(both are hashed and read together)", path)
        self.path, self._xml = path, xml
        self._core = core = ov.Core()
        try:
            model = core.read_model(str(xml), str(xml.with_suffix(".bin")))
            self.compiled = core.compile_model(model, "CPU", CONFIG)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeError subclasses
            raise BadInput(f"is not a loadable OpenVINO IR: {exception_text(exc, 200)}", path) from None
        self.request = self.compiled.create_infer_request()
        shapes = [_shape(port.get_partial_shape()) for port in self.compiled.inputs]
        resolved = input_layouts(layouts, shapes)
        self.inputs = [TensorSpec(_name(port, i, "input"), shapes[i], _dtype(port), resolved[i])
                       for i, port in enumerate(self.compiled.inputs)]
        self.outputs = [TensorSpec(_name(port, i, "output"), _shape(port.get_partial_shape()), _dtype(port))
                        for i, port in enumerate(self.compiled.outputs)]
        self.device = "cpu"

    def run(self, feeds):
        feeds = conform_feeds(self.inputs, feeds, self.path)
        try:
            results = self.request.infer([feeds[spec.name] for spec in self.inputs])
        except Exception as exc:  # noqa: BLE001
            raise BadInput(f"OpenVINO fails to run this model on the given inputs: {exception_text(exc, 240)}", self.path) from None
        return {spec.name: results[port].copy() for spec, port in zip(self.outputs, self.compiled.outputs)}

    def tensor_names(self) -> list[str]:
        """Names of the IR's internal tensors in graph order (OpenVINO's ONNX frontend keeps the ONNX
        tensor names of the layers it keeps; ops it fuses, such as a GELU's Div/Erf/Add, lose theirs)."""
        model = self._core.read_model(str(self._xml), str(self._xml.with_suffix(".bin")))
        return [name for op in model.get_ordered_ops() if op.get_type_name() not in _NOT_CHECKPOINTS
                for port in op.outputs() for name in sorted(port.get_names())]

    def intermediates(self, names: list[str], feeds) -> dict:
        """The values of internal tensors by name, on `feeds` (see `probe`). Names the IR does not
        carry are left out."""
        return self.probe(names)(feeds)

    def probe(self, names: list[str]):
        """A function of feeds returning the internal tensors `names` by name: the IR is read again
        with them added as outputs (`Model.add_outputs`) and compiled once like the model itself
        (CPU, f32), so a walk over many batches compiles once. Extra outputs can keep the CPU plugin
        from fusing an op with the next (a Conv with its Relu), so these are the layers' values, not
        the fused kernels'."""
        wanted, ports = set(names), {}
        model = self._core.read_model(str(self._xml), str(self._xml.with_suffix(".bin")))
        for op in model.get_ordered_ops():
            if op.get_type_name() in _NOT_CHECKPOINTS:
                continue
            for port in op.outputs():
                for name in port.get_names() & wanted:
                    ports.setdefault(name, port)
        if not ports:
            return lambda feeds: {}
        model.add_outputs(list(ports.values()))
        try:
            compiled = self._core.compile_model(model, "CPU", CONFIG)
        except Exception as exc:  # noqa: BLE001
            raise BadInput(f"OpenVINO fails to compile this model with its intermediate outputs: {exception_text(exc, 240)}",
                           self.path) from None
        request = compiled.create_infer_request()

        def run(feeds) -> dict:
            feeds = conform_feeds(self.inputs, feeds, self.path)
            try:
                results = request.infer([feeds[spec.name] for spec in self.inputs])
            except Exception as exc:  # noqa: BLE001
                raise BadInput(f"OpenVINO fails to run this model with its intermediate outputs: "
                               f"{exception_text(exc, 240)}", self.path) from None
            found = {}
            for port in compiled.outputs:
                for name in port.get_names() & ports.keys():
                    found[name] = results[port].copy()
            return found

        return run

    def graph_ops(self) -> list[dict]:
        """The IR's ops (Parameters, Constants and Results aside) in graph order, framework-neutral,
        for a comparison with the ONNX graph it was read from: friendly name (the ONNX node's name,
        or `NAME/WithoutBiases` for a part the frontend split off), op type, output tensor names,
        the friendly names of the ops it reads, its attributes, and the constants it reads (through
        f16 decompression `Convert`s) as (input position, tensor names, float32 value)."""
        import numpy as np

        model = self._core.read_model(str(self._xml), str(self._xml.with_suffix(".bin")))
        found = []
        for op in model.get_ordered_ops():
            kind = op.get_type_name()
            if kind in ("Parameter", "Constant", "Result", "Convert") and not _computes(op):
                continue
            inputs, constants = [], []
            for position, port in enumerate(op.inputs()):
                producer = port.get_source_output().get_node()
                while producer.get_type_name() == "Convert" and producer.inputs():
                    producer = producer.input(0).get_source_output().get_node()
                inputs.append(producer.get_friendly_name())
                if producer.get_type_name() == "Constant":
                    value = producer.get_data()
                    if np.issubdtype(value.dtype, np.floating):
                        constants.append((position, sorted(producer.output(0).get_names()) + [producer.get_friendly_name()],
                                          np.asarray(value, dtype=np.float32)))
            try:
                attributes = {k: v for k, v in op.get_attributes().items() if isinstance(v, (int, float, str, list))}
            except Exception:  # noqa: BLE001 - an op whose attributes the Python API cannot read
                attributes = {}
            found.append({"name": op.get_friendly_name(), "type": kind, "inputs": inputs, "constants": constants,
                          "outputs": sorted(n for port in op.outputs() for n in port.get_names()), "attributes": attributes})
        return found


def _computes(op) -> bool:
    """A Convert of a non-constant (a precision change inside the graph) is an op; a Constant, a
    Result or a weight's f16 decompression is not."""
    if op.get_type_name() != "Convert":
        return False
    return op.input(0).get_source_output().get_node().get_type_name() != "Constant"


_NOT_CHECKPOINTS = {"Parameter", "Constant", "Result", "Convert", "ShapeOf"}


def _name(port, index: int, kind: str) -> str:
    try:
        return port.get_any_name()
    except RuntimeError:  # an unnamed port
        return f"{kind}_{index}"


def _dtype(port) -> str:
    return _OV_DTYPES.get(port.get_element_type().get_type_name(), "float32")


def _shape(partial) -> tuple[int | None, ...]:
    if partial.rank.is_dynamic:
        return ()
    return tuple(dim.get_length() if dim.is_static else None for dim in partial)


@PLUGIN.format("openvino", description="OpenVINO IR (folder with model.xml + model.bin)", suffix=".openvino",
               detect=is_openvino)
def load(request: LoadRequest) -> Runner:
    return OpenVinoRunner(request.ref.path, request.declared_layouts)
