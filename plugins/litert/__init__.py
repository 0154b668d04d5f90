"""LiteRT from PyTorch: a .pt2 converted to a .tflite by litert-torch (formerly ai-edge-torch), fp32
or int8 (PT2E static quantization with the calibration data), run by LiteRT's interpreter
(`ai_edge_litert`). litert-torch installs with --no-deps (docs/ROUTES.md says why)."""

from convrepair.plugins import Plugin

PLUGIN = Plugin(
    name="litert",
    description="PyTorch .pt2 -> .tflite with litert-torch (fp32, PT2E int8)",
    requires=("litert_torch", "ai_edge_litert", "torch"),
)

from convrepair_plugins.litert import convert, runner  # noqa: E402,F401  (registration)
