"""Golden files (`convrepair check --save-outputs`) loaded as a model: the outputs it recorded."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

from convrepair.errors import BadInput
from convrepair.golden import MARKER, OUTPUT_PREFIX
from convrepair.model import Runner, TensorSpec, conform_feeds
from convrepair.plugins import LoadRequest, Plugin

PLUGIN = Plugin(name="golden", description="saved inputs and outputs of a model (check --save-outputs)",
                requires=("numpy",))


def looks_like_golden(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return f"{MARKER}.npy" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


class GoldenRunner(Runner):
    """Answers a batch with the outputs recorded for exactly those input rows (found by content)."""

    def __init__(self, path: Path):
        import numpy as np

        self.path = path
        try:
            archive = np.load(path, allow_pickle=False)
            header = json.loads(str(archive[MARKER]))
            self.inputs = [TensorSpec(s["name"], tuple(s["shape"]), s["dtype"], s["layout"]) for s in header["inputs"]]
            self.outputs = [TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in header["outputs"]]
            inputs = [archive[s["key"]] for s in header["inputs"]]
            self._values = {spec.name: archive[OUTPUT_PREFIX + spec.name] for spec in self.outputs}
        except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile) as exc:
            raise BadInput(f"is not a readable golden file: {exc}", path) from None
        self.source = header.get("source", {})
        self._rows = {self._key([x[i] for x in inputs]): i for i in range(len(inputs[0]))}

    @staticmethod
    def _key(row) -> bytes:
        import numpy as np

        digest = hashlib.sha256()
        for part in row:
            digest.update(np.ascontiguousarray(part, dtype=np.float64 if part.dtype.kind == "f" else part.dtype).tobytes())
        return digest.digest()

    def run(self, feeds):
        import numpy as np

        feeds = conform_feeds(self.inputs, feeds, self.path)
        arrays = [feeds[spec.name] for spec in self.inputs]
        rows = []
        for i in range(len(arrays[0])):
            index = self._rows.get(self._key([a[i] for a in arrays]))
            if index is None:
                raise BadInput("holds no outputs for these inputs; compare on the inputs it was saved with "
                               "(its own, the default data for a golden source)", self.path)
            rows.append(index)
        picked = np.asarray(rows)
        return {name: values[picked] for name, values in self._values.items()}


@PLUGIN.format("golden", description="golden inputs and outputs (.npz from check --save-outputs)", suffix=".npz",
               detect=looks_like_golden)
def load(request: LoadRequest) -> Runner:
    return GoldenRunner(request.ref.path)
