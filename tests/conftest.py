"""Tiny randomly initialised models (Llama and OPT) and a byte-level tokenizer, for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. "
) * 40


def tiny_llama(seed: int = 0, layers: int = 2, vocab: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def tiny_opt(seed: int = 0, layers: int = 2, vocab: int = 256):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=vocab, hidden_size=64, ffn_dim=128, num_hidden_layers=layers,
                       num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=512,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return OPTForCausalLM(config).eval()


def byte_tokenizer():
    """A 256-token byte-level tokenizer (ids 0-2 double as pad/bos/eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    inv = {i: ch for ch, i in vocab.items()}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=inv[0], bos_token=inv[1], eos_token=inv[2])


@pytest.fixture(params=["llama", "opt"])
def tiny_model(request):
    return (tiny_llama if request.param == "llama" else tiny_opt)()


def save_tiny(path: Path, family: str = "llama") -> Path:
    model = tiny_llama() if family == "llama" else tiny_opt()
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(autouse=True, scope="session")
def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")


def random_windows(n: int = 4, seqlen: int = 32, vocab: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))
