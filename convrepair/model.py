"""What a model is to the engine: a file reference, its tensors, and a runner that executes it.

The engine never imports a framework. Plugins turn a `ModelRef` into a `Runner`; everything after
that sees numpy arrays with an explicit layout.
"""

from __future__ import annotations

import abc
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from convrepair.errors import BadInput, UnsafeModel
from convrepair.fsutil import combined_digest, file_digests

if TYPE_CHECKING:
    import numpy as np

#: Layouts a tensor can declare. "any" means the engine must not reinterpret its axes.
LAYOUTS = ("NCHW", "NHWC", "NC", "any")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]
    dtype: str
    layout: str = "any"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}


@dataclass(frozen=True)
class ModelRef:
    """A model on disk: where it is, what format its content says it is, and what it hashes to."""

    path: Path
    format: str
    sha256: str
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


class Runner(abc.ABC):
    """Runs one loaded model on numpy batches. Use as a context manager; `close` frees resources."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device: str = "cpu"

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return every output by name for a batch given as `{input name: array}`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Differentiable(abc.ABC):
    """A model whose input gradients the lenses can take (FGSM/PGD), in its own framework.

    One input, numpy in and out, in the model's own layout. The loss is the cross-entropy of the
    model's class scores (log-softmax of logits, or the log of probabilities a softmax head gives).
    """

    inputs: list[TensorSpec]
    device: str = "cpu"

    @abc.abstractmethod
    def loss_gradient(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d loss / d x, class scores) for one batch `x` and integer `labels`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Differentiable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def guess_layout(shape: tuple[int | None, ...]) -> str:
    """Layout of an image-like input from its shape, for models that do not say."""
    if len(shape) == 4:
        c_first, c_last = shape[1], shape[3]
        if c_last in (1, 3, 4) and c_first not in (1, 3, 4):
            return "NHWC"
        if c_first in (1, 3, 4) and c_last not in (1, 3, 4):
            return "NCHW"
    if len(shape) == 2:
        return "NC"
    return "any"


def input_layouts(declared: list[str], shapes: list[tuple[int | None, ...]]) -> list[str]:
    """Each input's layout: as the sidecar declares it, else guessed from its shape."""
    return [declared[i] if i < len(declared) else guess_layout(shape) for i, shape in enumerate(shapes)]


# --- content sniffing shared by the format detectors --------------------------------------------

_PICKLE_PROTOCOL_BYTE = b"\x80"


def zip_members(path: Path) -> list[str]:
    """Member names of a zip file, or [] when the file is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


def refuse_pickles(path: Path) -> None:
    """Raise `UnsafeModel` for content that only a pickle loader could read.

    Plain pickles and `torch.save` checkpoints (a zip with `data.pkl` but no TorchScript code)
    can run arbitrary code when loaded, so they are never loaded at all.
    """
    if path.is_dir():
        return
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head[:1] == _PICKLE_PROTOCOL_BYTE and len(head) == 2 and 2 <= head[1] <= 5:
        raise UnsafeModel(
            "is a raw Python pickle; refusing to load it (unpickling runs code). "
            "Export the model with torch.export (.pt2), torch.jit.save (.pt) or to ONNX.",
            path,
        )
    members = zip_members(path)
    has_pickle = any(m.endswith("/data.pkl") or m == "data.pkl" for m in members)
    is_torchscript = any("/code/" in m for m in members)
    is_pt2 = any(m.endswith("archive_format") for m in members)
    if has_pickle and not is_torchscript and not is_pt2:
        raise UnsafeModel(
            "is a torch.save pickle checkpoint, not a TorchScript or exported program; "
            "refusing to unpickle it. Save it with torch.export.save (.pt2) or torch.jit.save.",
            path,
        )


class FormatDetector(Protocol):
    """What `model_ref` needs of the plugin registry: the formats it knows and how it tells them apart
    (a protocol, so this module sits below `plugins` and never imports it)."""

    formats: dict[str, Any]

    def detect_format(self, path: Path) -> str | None: ...


def model_ref(path: str | Path, registry: FormatDetector, fmt: str | None = None) -> ModelRef:
    """Inspect `path` and return its `ModelRef`; a clear `BadInput` when it is not a usable model."""
    path = Path(path)
    if not path.exists():
        raise BadInput("no such file or directory", path)
    if path.is_file() and path.stat().st_size == 0:
        raise BadInput("is empty (0 bytes); not a model", path)
    refuse_pickles(path)
    detected = fmt or registry.detect_format(path)
    if detected is None:
        known = ", ".join(sorted(registry.formats))
        raise BadInput(f"content is not a model format convrepair knows ({known})", path)
    digests = file_digests(path)
    return ModelRef(path=path, format=detected, sha256=combined_digest(digests), files=digests)


def conform_feeds(specs: list[TensorSpec], feeds: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Check a batch against the declared inputs and cast it to their dtypes.

    Raises `BadInput` naming the model when names, ranks or fixed dimensions do not fit, so a
    runner never fails deep inside a framework with an unreadable message.
    """
    import numpy as np

    missing = [spec.name for spec in specs if spec.name not in feeds]
    if missing:
        raise BadInput(f"batch lacks model input(s) {missing}; given {sorted(feeds)}", path)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        array = np.asarray(feeds[spec.name])
        if spec.shape and len(spec.shape) != array.ndim:
            raise BadInput(
                f"input '{spec.name}' expects rank {len(spec.shape)} {_shape_text(spec.shape)}, "
                f"got shape {tuple(array.shape)}",
                path,
            )
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            if axis > 0 and want is not None and want != got:
                raise BadInput(
                    f"input '{spec.name}' expects shape {_shape_text(spec.shape)}, got {tuple(array.shape)}",
                    path,
                )
        out[spec.name] = array.astype(spec.dtype, copy=False) if spec.dtype else array
    return out


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if dim is None else str(dim) for dim in shape) + ")"
