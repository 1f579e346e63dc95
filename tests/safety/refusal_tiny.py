"""A tiny random decoder config and a character tokenizer for the refusal classifier tests."""

from align_jax.models.config import ModelConfig

TINY = ModelConfig(family="llama", vocab_size=128, hidden_size=16, intermediate_size=32, num_layers=3,
                   num_heads=2, num_kv_heads=1, head_dim=8)


class CharTokenizer:
    """One token per character (ids = code point mod 128); enough for encode_for_features."""

    def encode_with_offsets(self, text):
        return [ord(c) % 128 for c in text], [(i, i + 1) for i in range(len(text))]
