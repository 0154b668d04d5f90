"""The small JSON file written next to every converted model; later stages read it.

It records where the model came from (source digest, every conversion step with its tool
versions and options), the input layout and preprocessing the model expects, and its precision.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from convrepair.errors import BadInput
from convrepair.fsutil import write_json_atomic

SCHEMA = "convrepair.sidecar/v1"
SUFFIX = ".convrepair.json"


@dataclass
class Preprocessing:
    """How raw data becomes the model's input: x_model = (x_raw * scale + offset)[channel_order].

    `input_range` is the (min, max) of the float inputs measured on the data the model was
    converted with (`convert --data`), or None: never an assumed range, because the check's range
    guard judges real data against it."""

    scale: float = 1.0
    offset: float = 0.0
    channel_order: str | None = None  # e.g. "RGB" / "BGR"; None = single channel or unknown
    input_range: tuple[float, float] | None = None


# The range of the uniform noise a check draws when it has no data and the source records no
# range: an assumption about synthetic inputs, said as such wherever it is used, never recorded.
NOISE_RANGE = (0.0, 1.0)


def recorded_range(sidecar: Sidecar | None) -> tuple[float, float] | None:
    """The input range a sidecar records (measured at conversion), or None."""
    if sidecar is None or sidecar.preprocessing.input_range is None:
        return None
    low, high = sidecar.preprocessing.input_range
    return float(low), float(high)


def noise_origin(recorded: tuple[float, float] | None) -> str:
    """How a check names the uniform noise it draws without data: in the recorded range, else in
    NOISE_RANGE, an assumption said as such."""
    low, high = recorded or NOISE_RANGE
    assumed = "" if recorded else " (synthetic noise: no --data and no recorded input range, so [0, 1] is assumed)"
    return f"uniform[{float(low)}, {float(high)}]{assumed}"


@dataclass
class ConversionStep:
    converter: str
    tool: str
    tool_versions: dict[str, str]
    options: dict[str, Any]
    source_format: str
    output_format: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sidecar:
    source: dict[str, Any] | None = None  # ModelRef of the original model, as JSON
    output: dict[str, Any] | None = None  # ModelRef of this model, as JSON
    steps: list[ConversionStep] = field(default_factory=list)
    input_layout: list[str] = field(default_factory=list)  # one per model input, in input order
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    precision: str = "fp32"
    labels: list[str] | None = None
    schema: str = SCHEMA

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        span = self.preprocessing.input_range
        data["preprocessing"]["input_range"] = list(span) if span is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> Sidecar:
        if data.get("schema") != SCHEMA:
            raise BadInput(f"sidecar schema is {data.get('schema')!r}, expected {SCHEMA!r}", path)
        try:
            pre = dict(data.get("preprocessing") or {})
            if pre.get("input_range") is not None:  # older sidecars carry [0, 1]: still read as written
                low, high = pre["input_range"]
                pre["input_range"] = (float(low), float(high))
            return cls(
                source=data.get("source"),
                output=data.get("output"),
                steps=[ConversionStep(**step) for step in data.get("steps", [])],
                input_layout=list(data.get("input_layout") or []),
                preprocessing=Preprocessing(**pre),
                precision=data.get("precision", "fp32"),
                labels=data.get("labels"),
            )
        except (TypeError, ValueError) as exc:
            raise BadInput(f"sidecar is malformed: {exc}", path) from None


def sidecar_path(model_path: Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + SUFFIX)


def read_sidecar(model_path: Path) -> Sidecar | None:
    """The sidecar of a model, or None when it has none."""
    path = sidecar_path(model_path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"sidecar is not valid JSON: {exc}", path) from None
    if not isinstance(data, dict):
        raise BadInput("sidecar is not a JSON object", path)
    return Sidecar.from_json(data, path)


def write_sidecar(model_path: Path, sidecar: Sidecar) -> Path:
    path = sidecar_path(model_path)
    write_json_atomic(path, sidecar.to_json())
    return path
