"""A BERT-large-shaped encoder (335M parameters) with seeded weights, exported to .pt2: the zoo's
model ten times larger (issue 21), to show what a check costs when the models are big.

Nothing is downloaded: the shape is BERT-Large, Uncased's published config (below, with its
source), the weights are drawn from a seeded generator the way BERT initializes them (normal,
std `initializer_range`; LayerNorm 1/0; biases 0), and the text is real: sentences from installed
packages' descriptions (bench.zoo.minilm.sentences) packed to the sequence length, tokenized by the
all-MiniLM-L6-v2 tokenizer, which is BERT's uncased WordPiece vocabulary (30522 ids, the same as
BERT-large-uncased's). The exported program takes (input_ids, attention_mask), batch a `Dim`,
and returns the mean-pooled, L2-normalized embedding, as the MiniLM zoo model does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.zoo.manifest import Built, Size, write_model_sidecar

# BERT-Large, Uncased (24-layer, 1024-hidden, 16-heads, 340M parameters): bert_config.json of
# https://storage.googleapis.com/bert_models/2018_10_18/uncased_L-24_H-1024_A-16.zip
# (google-research/bert README; Devlin et al. 2018, arXiv:1810.04805, Table/§3: L=24, H=1024, A=16);
# layer_norm_eps as huggingface.co/bert-large-uncased/config.json (the TF code's 1e-12).
CONFIG = {
    "vocab_size": 30522,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
}
SEED = 21  # the number: the weights are a function of this seed and CONFIG alone


def parameter_count(config: dict = CONFIG) -> int:
    """Parameters of the encoder `build_encoder` makes, from the config alone (no tensors made)."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    embeddings = (config["vocab_size"] + config["max_position_embeddings"] + config["type_vocab_size"]) * h + 2 * h
    attention = 4 * (h * h + h) + 2 * h
    feed_forward = (h * i + i) + (i * h + h) + 2 * h
    return embeddings + layers * (attention + feed_forward)


def build_encoder(config: dict = CONFIG, seed: int = SEED):
    import torch
    from torch import nn

    hidden, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]
    head = hidden // heads

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
            split = lambda t: t.view(batch, seq, heads, head).transpose(1, 2)  # noqa: E731
            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = q @ k.transpose(-1, -2) / float(np.sqrt(head)) + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, hidden)
            x = self.attention_norm(x + self.attention_out(context))
            return self.out_norm(x + self.out(nn.functional.gelu(self.intermediate(x))))

    class BertLarge(nn.Module):
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

    with torch.device("meta"):  # no default init of 335M weights that are redrawn at once below
        model = BertLarge()
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():  # BERT's init (modeling.py create_initializer)
            if "norm" in name:
                tensor.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                tensor.zero_()
            else:
                tensor.normal_(0.0, config["initializer_range"], generator=generator)
    if sum(p.numel() for p in model.parameters()) != parameter_count(config):
        raise RuntimeError("parameter_count(CONFIG) does not match the built encoder")
    return model.eval()


def packed_texts(count: int, length: int) -> list[str]:
    """`count` distinct real texts, each consecutive sentences (from a different first sentence)
    packed until about `length` tokens, so a sequence is mostly text, not padding."""
    from bench.zoo.minilm import sentences

    pool: list[str] = []
    for n in (400, 200, 137, 100):
        try:
            pool = sentences(n)
            break
        except RuntimeError:
            continue
    if len(pool) < count:
        raise RuntimeError(f"only {len(pool)} distinct starting sentences; {count} texts wanted")
    texts = []
    for start in range(count):
        words: list[str] = []
        k = start
        while len(words) < length * 0.7:  # WordPiece gives ~1.3 tokens per word: fill, then truncate
            words += pool[k % len(pool)].split()
            k += 1
        texts.append(" ".join(words))
    return texts


def build(out: Path, size: Size) -> Built:
    import torch

    from bench.zoo.minilm import tokenize

    torch.manual_seed(0)
    model = build_encoder()
    ids, mask = tokenize(packed_texts(size.samples + size.holdout, size.sequence), size.sequence)
    with torch.no_grad():
        embeddings = model(torch.from_numpy(ids[:16]), torch.from_numpy(mask[:16])).numpy()
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    program = torch.export.export(model, example, dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}})
    path = out / "bert_large.pt2"
    torch.export.save(program, str(path))
    write_model_sidecar(path, "pt2", ["any", "any"], input_range=(0.0, float(CONFIG["vocab_size"] - 1)), channel_order=None)
    n = size.samples
    np.savez(out / "bert_large_data.npz", input_ids=ids[:n], attention_mask=mask[:n])
    np.savez(out / "bert_large_holdout.npz", input_ids=ids[n:], attention_mask=mask[n:])
    alive = seeded_spread(embeddings) | {"parameters": parameter_count(), "sequence": size.sequence,
                                             "text_tokens_share": round(float(mask.mean()), 3)}
    return Built(name="bert_large", model=path, data=out / "bert_large_data.npz", holdout=out / "bert_large_holdout.npz",
                 layout="tokens", alive=alive, output="embedding")


def seeded_spread(embeddings: np.ndarray) -> dict:
    """Seeded (untrained) weights give embeddings that share one large common direction (mean
    pairwise cosine ~0.99, measured): alive means each text moves its embedding off that common
    mean by a clear margin, and no two texts give the same embedding."""
    centred = embeddings - embeddings.mean(0)
    distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)[~np.eye(len(embeddings), dtype=bool)]
    cosine = embeddings @ embeddings.T
    stats = {"mean_pairwise_cosine": round(float(cosine[~np.eye(len(cosine), dtype=bool)].mean()), 4),
             "off_mean_share": round(float(np.linalg.norm(centred, axis=1).mean() / np.linalg.norm(embeddings.mean(0))), 4),
             "min_pairwise_distance": round(float(distances.min()), 5)}
    if not stats["off_mean_share"] > 0.05 or not stats["min_pairwise_distance"] > 1e-3:
        raise RuntimeError(f"BERT-large embeddings barely vary across the texts: {stats}")
    return stats
