"""PyTorch (.pt2) -> LiteRT (.tflite) with `litert_torch.convert`, as litert-torch's guide does it.

- `litert`: the program's module converted in fp32 at a fixed batch (litert-torch fails to lower a
  dynamic batch through `Flatten`/`view`; the runner runs larger batches in pieces).
- `litert-int8`: PT2E static quantization (litert-torch's `PT2EQuantizer`, symmetric, per-channel
  weights) calibrated on `--calibration FILE.npz`, then converted with that quantizer's config: int8
  weights and activations inside, float I/O.
Other dynamic axes (a sequence length) are fixed at the size of the program's example inputs. The
written flatbuffer is read back by LiteRT's interpreter before it is kept.
"""

from __future__ import annotations

from convrepair.errors import BadInput, exception_text
from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.litert import PLUGIN

CALIBRATION_LIMIT = 200  # samples pushed through the PT2E observers


def _program(request: ConvertRequest):
    """The loaded program, its input specs and a fixed-shape example: batch `batch` (default 1),
    any other dynamic axis at the size of the program's own example inputs."""
    import torch

    from convrepair_plugins.torch.runner import exported_input_specs
    from convrepair_plugins.torch.safe_load import load_exported_program

    from convrepair_plugins.executorch.to_pte import refuse_non_pt2

    refuse_non_pt2(request, "LiteRT")
    program = load_exported_program(request.source.path)
    specs = exported_input_specs(program)
    batch = int(request.options.get("batch", 1))
    if batch < 1:
        raise BadInput(f"option batch={batch}: must be at least 1")
    own = list(program.example_inputs[0]) if program.example_inputs else []
    example = []
    for i, (name, shape, dtype) in enumerate(specs):
        sizes = [d for d in shape]
        for axis, d in enumerate(shape):
            if d is None and axis > 0:
                if i >= len(own):
                    raise BadInput(f"input '{name}' has dynamic axis {axis} and the program keeps no example "
                                   "input to fix it from; export with that axis static", request.source.path)
                sizes[axis] = int(own[i].shape[axis])
        if sizes and shape[0] is None:
            sizes[0] = batch
        example.append(torch.zeros(sizes, dtype=getattr(torch, dtype)))
    return program, specs, tuple(example)


def _convert(request: ConvertRequest, module, example, quant_config=None) -> None:
    import os

    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # its progress tree goes to stdout, which is ours
    import litert_torch

    try:
        edge = litert_torch.convert(module, example, quant_config=quant_config)
        edge.export(str(request.output))
    except Exception as exc:  # noqa: BLE001 - litert-torch refusing the program is the user's to know
        raise BadInput(f"litert-torch cannot convert this program: {type(exc).__name__}: {exception_text(exc, 300)}",
                       request.source.path) from None
    _reads_back(request)


def _reads_back(request: ConvertRequest) -> None:
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_path=str(request.output)).allocate_tensors()
    except Exception as exc:  # noqa: BLE001
        raise BadInput(f"litert-torch wrote a .tflite LiteRT cannot load: {exception_text(exc, 300)}",
                       request.source.path) from None


def _notes(precision: str | None, details: dict) -> ConvertNotes:
    import torch

    versions = {"litert-torch": package_version("litert-torch"), "ai-edge-litert": package_version("ai-edge-litert"),
                "torch": torch.__version__}
    return ConvertNotes(tool="litert_torch.convert" + (" + PT2E int8" if precision == "int8" else ""),
                        tool_versions=versions, output_format="litert", precision=precision,
                        details=details | {"localization": "output-level only"})


@PLUGIN.converter("torch-to-litert", sources=["pt2"], target="litert", output_format="litert",
                  description="litert_torch.convert (fp32) at a fixed batch",
                  options={"batch": "the batch the flatbuffer is written for (default 1)"})
def torch_to_litert(request: ConvertRequest) -> ConvertNotes:
    from convrepair_plugins.executorch.quiet import quiet

    program, _, example = _program(request)
    with quiet():
        _convert(request, program.module(), example)
    return _notes(None, {"batch": _batch(example)})


@PLUGIN.converter(
    "torch-to-litert-int8", sources=["pt2"], target="litert-int8", output_format="litert",
    description="PT2E static int8 (litert-torch PT2EQuantizer) calibrated on --calibration, float I/O",
    options={"per_channel": "true | false: per-channel weight scales (default true)",
             "batch": "the batch the flatbuffer is written for (default 1)"},
    lossy=True,
)
def torch_to_litert_int8(request: ConvertRequest) -> ConvertNotes:
    if not request.calibration:
        raise BadInput("int8 quantization with litert-torch needs calibration samples: pass --calibration FILE.npz "
                       "(e.g. the data you check with)", request.source.path)
    import torch

    from convrepair_plugins.executorch.quiet import quiet

    per_channel = str(request.options.get("per_channel", "true")).lower() not in ("false", "0", "no")
    program, specs, example = _program(request)
    batches = _calibration_batches(request.calibration, specs, size=_batch(example) or 1)
    with quiet():
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
        captured = torch.export.export(program.module(), example).module()
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            for batch in batches:
                prepared(*batch)
        quantized = convert_pt2e(prepared, fold_quantize=False)
        _convert(request, quantized, example, QuantConfig(pt2e_quantizer=quantizer))
    samples = sum(int(b[0].shape[0]) for b in batches)
    return _notes("int8", {"quantizer": "PT2EQuantizer symmetric", "per_channel": per_channel,
                           "calibration_samples": samples, "batch": _batch(example)})


def _calibration_batches(data: dict, specs: list, size: int, limit: int = CALIBRATION_LIMIT) -> list[tuple]:
    """Calibration samples as the program's inputs (by input name, else by position), in batches of the
    fixed batch the program is captured at (a shorter last batch is dropped)."""
    import numpy as np
    import torch

    values = list(data.values())
    if len(values) < len(specs):
        raise BadInput(f"calibration data has {len(values)} array(s); the program takes {len(specs)} input(s)")
    arrays = [np.asarray(data[name] if name in data else values[i]) for i, (name, _, _) in enumerate(specs)]
    count = min(int(arrays[0].shape[0]), limit)
    return [tuple(torch.from_numpy(np.ascontiguousarray(a[start:start + size]).astype(dtype))
                  for a, (_, _, dtype) in zip(arrays, specs))
            for start in range(0, count - size + 1, size)]


def _batch(example: tuple) -> int | None:
    return int(example[0].shape[0]) if example and example[0].dim() else None
