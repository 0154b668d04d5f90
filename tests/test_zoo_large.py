"""The zoo's large transformer (issue 21) is what it says: >= 300M parameters by its published config.

Counted from the config, never built at full size here (1.3 GB); the count's formula is proven on a
tiny config, whose encoder is built and counted tensor by tensor."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.zoo.bert_large import CONFIG, build_encoder, parameter_count  # noqa: E402
from bench.zoo.manifest import ALL_ZOO, LARGE_ZOO, ZOO  # noqa: E402


def test_bert_large_config_has_over_300m_parameters():
    assert (CONFIG["hidden_size"], CONFIG["num_hidden_layers"], CONFIG["num_attention_heads"]) == (1024, 24, 16)
    assert 330_000_000 < parameter_count() < 340_000_000


def test_parameter_count_matches_a_built_encoder():
    tiny = CONFIG | {"vocab_size": 101, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "intermediate_size": 64, "max_position_embeddings": 40}
    model = build_encoder(tiny, seed=0)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(tiny)


def test_large_model_is_built_only_when_named():
    assert "bert_large" in LARGE_ZOO and "bert_large" in ALL_ZOO and "bert_large" not in ZOO
