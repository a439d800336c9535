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


#: published widths: Llama-3.1-8B and Llama-3.1-70B (the 70B is usually built with fewer of its 80 layers)
SHAPES = {
    "8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256),
    "70b": dict(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=128256),
    "tiny": dict(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, vocab=256),  # smoke tests
}


def byte_tokenizer():
    """A 256-token byte-level tokenizer: random models have no tokenizer, and one token per byte is enough
    to cut calibration windows from any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=alphabet[0], bos_token=alphabet[1],
                                   eos_token=alphabet[2])


def save_random_llama(folder, shape: str = "8b", layers: int | None = None, dtype=torch.bfloat16,
                      device: str = "cuda", seed: int = 0):
    """A random-weight Llama of a published shape (`layers` of them, default all) saved as a sharded Hugging Face
    directory with a byte-level tokenizer; returns the number of parameters."""
    widths = dict(SHAPES[shape])
    if layers:
        widths["layers"] = layers
    torch.manual_seed(seed)
    model = random_llama(**widths, dtype=dtype, device=device)
    model.config.max_position_embeddings = 8192
    model.save_pretrained(folder, max_shard_size="4GB")
    byte_tokenizer().save_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return count
