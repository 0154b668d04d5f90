"""Plugin discovery and the registry of formats and converters.

Every plugin, built-in or third-party, comes through one door: the entry-point group
`convrepair.plugins`. An entry point names a module with a module-level `PLUGIN` (a `Plugin`).
Importing that module must be cheap: frameworks are imported inside loaders and converters.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convrepair.errors import BadInput, PluginUnavailable, exception_text

if TYPE_CHECKING:
    import numpy as np

    from convrepair.model import Differentiable, ModelRef, Runner
    from convrepair.sidecar import Sidecar

ENTRY_POINT_GROUP = "convrepair.plugins"


@dataclass(frozen=True)
class LoadRequest:
    ref: ModelRef
    sidecar: Sidecar | None = None
    device: str = "auto"

    @property
    def declared_layouts(self) -> list[str]:
        return list(self.sidecar.input_layout) if self.sidecar else []

    def input_layouts(self, shapes: list[tuple[int | None, ...]]) -> list[str]:
        from convrepair.model import input_layouts

        return input_layouts(self.declared_layouts, shapes)


@dataclass(frozen=True)
class FormatSpec:
    """A model format: how to recognise it by content and how to load it into a `Runner`."""

    name: str
    description: str
    suffix: str
    detect: Callable[[Path], bool]
    load: Callable[[LoadRequest], Runner]
    plugin: str = ""
    # what a file of this format says of its own precision ("int8" for a quantized TFLite), for a
    # file that came without a sidecar; None: the format says nothing (fp32 is assumed)
    precision: Callable[[Path], str] | None = None


@dataclass
class ConvertRequest:
    """What a converter gets: the source, where to write, and the options the user gave."""

    source: ModelRef
    output: Path
    options: dict[str, Any] = field(default_factory=dict)
    sidecar: Sidecar | None = None
    calibration: dict[str, np.ndarray] | None = None


@dataclass
class ConvertNotes:
    """What a converter reports back; it lands in the output's sidecar."""

    tool: str
    tool_versions: dict[str, str]
    output_format: str
    output: Path | None = None  # set when the converter wrote elsewhere than asked (fallbacks)
    details: dict[str, Any] = field(default_factory=dict)
    input_layout: list[str] | None = None  # set only when the converter changed the layout
    precision: str | None = None


@dataclass(frozen=True)
class ConverterSpec:
    """One conversion step: formats it accepts, the target name users ask for, what it writes."""

    name: str
    sources: tuple[str, ...]
    target: str
    output_format: str
    convert: Callable[[ConvertRequest], ConvertNotes]
    description: str = ""
    options: dict[str, str] = field(default_factory=dict)
    lossy: bool = False
    plugin: str = ""


@dataclass(frozen=True)
class GradientSpec:
    """How to load a format as a `Differentiable` (input gradients in the model's own framework)."""

    format: str
    load: Callable[[LoadRequest], Differentiable]
    plugin: str = ""


@dataclass(frozen=True)
class RegistrySpec:
    """A model registry the daemon can watch: `open(location, **options)` returns an object with
    `models()`, `versions(model)`, `version(model, version)`, `ready(version)` and
    `results_dir(version, target)` (see `convrepair.daemon.registry.DirectoryRegistry`)."""

    name: str
    description: str
    open: Callable[..., Any]
    plugin: str = ""
    uri_schemes: tuple[str, ...] = ()  # log URIs it resolves for approve/reject/verify (e.g. "models:/")


@dataclass
class Plugin:
    """What one plugin module provides. Register parts with the decorators, one per small module."""

    name: str
    description: str
    requires: tuple[str, ...] = ()
    probe: Callable[[], None] | None = None
    formats: list[FormatSpec] = field(default_factory=list)
    converters: list[ConverterSpec] = field(default_factory=list)
    registries: list[RegistrySpec] = field(default_factory=list)
    gradients: list[GradientSpec] = field(default_factory=list)

    def gradient(self, *formats: str):
        """Decorator for `load(request) -> Differentiable`, for the formats it can differentiate."""

        def register(load: Callable[[LoadRequest], Differentiable]):
            self.gradients.extend(GradientSpec(name, load, plugin=self.name) for name in formats)
            return load

        return register

    def registry(self, name: str, *, description: str, uri_schemes: tuple[str, ...] = ()):
        """Decorator for a registry opener: `@PLUGIN.registry("directory", ...) def open(location, **options)`."""

        def register(opener: Callable[..., Any]):
            self.registries.append(RegistrySpec(name, description, opener, plugin=self.name, uri_schemes=tuple(uri_schemes)))
            return opener

        return register

    def format(self, name: str, *, description: str, suffix: str, detect: Callable[[Path], bool],
               precision: Callable[[Path], str] | None = None):
        """Decorator for a loader: `@PLUGIN.format("onnx", ...) def load(request) -> Runner`."""

        def register(load: Callable[[LoadRequest], Runner]):
            self.formats.append(
                FormatSpec(name, description, suffix, detect, load, plugin=self.name, precision=precision)
            )
            return load

        return register

    def converter(
        self,
        name: str,
        *,
        sources: Iterable[str],
        target: str,
        output_format: str | None = None,
        description: str = "",
        options: dict[str, str] | None = None,
        lossy: bool = False,
    ):
        """Decorator for a conversion function `convert(request) -> ConvertNotes`."""

        def register(convert: Callable[[ConvertRequest], ConvertNotes]):
            self.converters.append(
                ConverterSpec(
                    name=name,
                    sources=tuple(sources),
                    target=target,
                    output_format=output_format or target,
                    convert=convert,
                    description=description,
                    options=dict(options or {}),
                    lossy=lossy,
                    plugin=self.name,
                )
            )
            return convert

        return register

    def unavailable_reason(self, deep: bool = False) -> str | None:
        """None when usable. `deep` imports the frameworks (slow) instead of only finding them."""
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"python package '{module}' is not installed"
        if deep:
            try:
                if self.probe is not None:  # first: a plugin may know how to import quietly
                    self.probe()
                for module in self.requires:
                    importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - any import failure means unavailable
                return f"{type(exc).__name__}: {exception_text(exc, 200)}"
        return None


@dataclass
class PluginRecord:
    plugin: Plugin | None
    entry_point: str
    error: str | None = None


class PluginRegistry:
    """All formats and converters, keyed by name. Double registration is an error, loudly."""

    def __init__(self) -> None:
        self.records: list[PluginRecord] = []
        self.formats: dict[str, FormatSpec] = {}
        self.converters: dict[str, ConverterSpec] = {}
        self.registries: dict[str, RegistrySpec] = {}
        self.gradients: dict[str, GradientSpec] = {}

    def add(self, plugin: Plugin, entry_point: str = "") -> None:
        for spec in plugin.formats:
            if spec.name in self.formats:
                other = self.formats[spec.name].plugin
                raise ValueError(f"format '{spec.name}' registered twice ({other}, {plugin.name})")
        for conv in plugin.converters:
            if conv.name in self.converters:
                other = self.converters[conv.name].plugin
                raise ValueError(f"converter '{conv.name}' registered twice ({other}, {plugin.name})")
        for spec in plugin.registries:
            if spec.name in self.registries:
                raise ValueError(f"registry '{spec.name}' registered twice ({self.registries[spec.name].plugin}, {plugin.name})")
        for spec in plugin.gradients:
            if spec.format in self.gradients:
                raise ValueError(f"gradients of '{spec.format}' registered twice ({self.gradients[spec.format].plugin}, {plugin.name})")
        self.gradients.update({spec.format: spec for spec in plugin.gradients})
        self.registries.update({spec.name: spec for spec in plugin.registries})
        self.formats.update({spec.name: spec for spec in plugin.formats})
        self.converters.update({conv.name: conv for conv in plugin.converters})
        self.records.append(PluginRecord(plugin, entry_point or plugin.name))

    def plugin(self, name: str) -> Plugin:
        for record in self.records:
            if record.plugin is not None and record.plugin.name == name:
                return record.plugin
        raise KeyError(name)

    def detect_format(self, path: Path) -> str | None:
        for spec in self.formats.values():
            try:
                if spec.detect(path):
                    return spec.name
            except OSError:
                continue
        return None

    def require(self, plugin_name: str, what: str) -> None:
        reason = self.plugin(plugin_name).unavailable_reason()
        if reason is not None:
            raise PluginUnavailable(f"{what} needs the '{plugin_name}' plugin, which is unavailable: {reason}")

    def load(self, ref: ModelRef, sidecar: Sidecar | None = None, device: str = "auto") -> Runner:
        spec = self.formats.get(ref.format)
        if spec is None:
            raise BadInput(f"no plugin loads format '{ref.format}'", ref.path)
        self.require(spec.plugin, f"loading a {ref.format} model")
        return spec.load(LoadRequest(ref=ref, sidecar=sidecar, device=device))

    def implied_sidecar(self, ref: ModelRef) -> Sidecar | None:
        """For a model without a sidecar: what its file says of itself (a quantized TFLite's int8),
        so it is judged in its own precision; None when the format says nothing beyond fp32."""
        spec = self.formats.get(ref.format)
        if spec is None or spec.precision is None or self.plugin(spec.plugin).unavailable_reason() is not None:
            return None
        precision = spec.precision(ref.path)
        if precision == "fp32":
            return None
        from convrepair.sidecar import Sidecar

        return Sidecar(precision=precision)

    def load_differentiable(self, ref: ModelRef, sidecar: Sidecar | None = None, device: str = "auto") -> Differentiable:
        """The model as a `Differentiable`; `PluginUnavailable` says why when no plugin can."""
        spec = self.gradients.get(ref.format)
        if spec is None:
            raise PluginUnavailable(f"no plugin takes input gradients of a {ref.format} model", ref.path)
        self.require(spec.plugin, f"gradients of a {ref.format} model")
        return spec.load(LoadRequest(ref=ref, sidecar=sidecar, device=device))

    def targets(self) -> list[str]:
        return sorted({conv.target for conv in self.converters.values()} | set(self.formats))


def discover(entry_points: Iterable[Any] | None = None) -> PluginRegistry:
    """Load every plugin announced in the entry-point group; a broken one is recorded, not fatal."""
    registry = PluginRegistry()
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for ep in sorted(entry_points, key=lambda e: e.name):
        try:
            loaded = ep.load()
            plugin = getattr(loaded, "PLUGIN", loaded)
            if not isinstance(plugin, Plugin):
                raise TypeError(f"{ep.value} does not provide a convrepair Plugin")
            registry.add(plugin, entry_point=f"{ep.name} = {ep.value}")
        except Exception as exc:  # noqa: BLE001 - one bad plugin must not break the rest
            registry.records.append(PluginRecord(None, f"{ep.name} = {ep.value}", f"{type(exc).__name__}: {exc}"))
    return registry


_DEFAULT: PluginRegistry | None = None


def default_registry() -> PluginRegistry:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = discover()
    return _DEFAULT


def package_version(name: str) -> str:
    """Installed version of a distribution, for the tool versions a sidecar records."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
