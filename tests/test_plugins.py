"""Plugin discovery through entry points, loud duplicate registration, lazy framework imports."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from convrepair.convert import plan_route
from convrepair.errors import BadInput
from convrepair.plugins import Plugin, PluginRegistry, default_registry, discover


def _entry_point(name: str, value: str, obj):
    return SimpleNamespace(name=name, value=value, load=lambda: obj)


def test_builtin_plugins_come_through_the_entry_point_group():
    registry = default_registry()
    names = {record.plugin.name for record in registry.records if record.plugin}
    assert {"onnx", "torch", "tensorflow"} <= names
    assert {"onnx", "keras", "savedmodel", "pt2", "torchscript", "tflite"} <= set(registry.formats)
    assert all(record.entry_point.startswith(record.plugin.name + " = ") for record in registry.records if record.plugin)


def test_duplicate_registration_is_refused():
    first, second = Plugin("a", "first"), Plugin("b", "second")
    for plugin in (first, second):
        plugin.format("fmt", description="x", suffix=".x", detect=lambda p: False)(lambda request: None)
    registry = PluginRegistry()
    registry.add(first)
    with pytest.raises(ValueError, match="format 'fmt' registered twice"):
        registry.add(second)


def test_a_broken_plugin_is_recorded_and_the_rest_keep_working():
    good = Plugin("good", "works")

    def explode():
        raise ImportError("no module named 'somethingelse'")

    broken = SimpleNamespace(name="broken", value="pkg.broken", load=explode)
    registry = discover([_entry_point("good", "pkg.good", good), broken])
    assert [r.plugin.name for r in registry.records if r.plugin] == ["good"]
    assert any(r.error and "somethingelse" in r.error for r in registry.records)


def test_missing_framework_makes_a_plugin_unavailable_with_a_reason():
    plugin = Plugin("ghost", "needs a package that is not installed", requires=("no_such_framework_xyz",))
    assert "no_such_framework_xyz" in plugin.unavailable_reason()


def test_plugins_command_lists_status_formats_and_converters(cli):
    result = cli("plugins", "--json", "--quick")
    assert result.code == 0, result.stderr
    rows = {row["plugin"]: row for row in json.loads(result.stdout)}
    assert rows["onnx"]["status"] == "available"
    assert "onnx-to-torch" in [c["name"] for c in rows["torch"]["converters"]]


def test_multi_hop_route_is_found_and_never_quantizes_on_the_way():
    registry = default_registry()
    assert [c.name for c in plan_route(registry, "keras", "torch")] == ["keras-to-onnx", "onnx-to-torch"]
    assert [c.name for c in plan_route(registry, "pt2", "onnx-int8")] == ["torch-to-onnx", "onnx-int8"]
    for conv in plan_route(registry, "keras", "onnx-fp16")[:-1]:
        assert not conv.lossy


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(BadInput, match="unknown conversion target .coreml.; conversion targets: .*onnx"):
        plan_route(default_registry(), "keras", "coreml")


HEAVY = ("torch", "tensorflow", "onnxruntime", "keras", "onnx")


def _frameworks_imported_by(code: str) -> str:
    probe = f"{code}\nimport sys\nprint('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout


def test_help_imports_no_framework():
    out = _frameworks_imported_by(
        "from convrepair.cli import app\ntry:\n    app(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass"
    )
    assert "HEAVY []" in out, out


def test_plugin_discovery_imports_no_framework():
    out = _frameworks_imported_by("from convrepair.plugins import discover\ndiscover()")
    assert "HEAVY []" in out, out
