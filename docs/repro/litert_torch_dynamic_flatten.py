"""litert-torch cannot convert a dynamic batch through Flatten (torch.flatten / view).

Expected: `litert_torch.convert(m, (x,), dynamic_shapes=({0: Dim("batch", min=2, max=1024)},))` of
`nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())` writes a .tflite with batch -1 (it does for the
same model without Flatten).
Got (litert-torch 0.10.0, torch 2.13.0, jax 0.10.2): TypeError: Shapes must be 1D sequences of
concrete values of integer type, got (JitTracer(int32[]), JitTracer(~int64[])) — in the jax lowering
of the reshape. A fixed-batch .tflite cannot be resized afterwards either: XNNPACK "failed to reshape" on
`resize_tensor_input`, so a converted model serves exactly one batch size.
Run: python docs/repro/litert_torch_dynamic_flatten.py  (needs litert-torch installed)
"""

import os

os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
import litert_torch  # noqa: E402
import torch  # noqa: E402

x = torch.zeros(2, 1, 8, 8)
batch = torch.export.Dim("batch", min=2, max=1024)
for name, model in [("conv only", torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))),
                    ("conv + Flatten", torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()))]:
    try:
        litert_torch.convert(model.eval(), (x,), dynamic_shapes=({0: batch},))
        print(f"{name}: converted with a dynamic batch")
    except Exception as exc:  # noqa: BLE001 - the point is the converter's own error
        print(f"{name}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
