"""Randomly initialised models of published widths: their time and memory are real, their quality is not."""

from __future__ import annotations

import torch


def random_llama(hidden: int = 4096, intermediate: int = 11008, layers: int = 4, heads: int = 32,
                 kv_heads: int = 32, vocab: int = 32000, dtype=torch.float16, device="cuda"):
    """A randomly initialised Llama of the given width (7B: 4096/11008/32 heads), for speed only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         max_position_embeddings=16384)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype).eval()
