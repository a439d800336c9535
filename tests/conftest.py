"""Tiny randomly initialised models (Llama, OPT, Gemma 3) and a byte-level tokenizer, for fast tests.

The suite runs ATen's and MKL's AVX2 code paths (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS; set before torch
is imported, and inherited by subprocesses): the pinned perplexities (tests/test_methods_smollm2.py) were measured
on an AVX2 machine, and on a CPU with AVX-512 the default paths sum in another order — SparseGPT's column sweep
turns those last bits into a 3.6% different perplexity of the 4-layer slice (four cases failed there). MKL_CBWR=AVX2
is not the same path: it moved SliceGPT's figure by 4%. With these settings every x86-64 machine with AVX2 gives the
pinned figures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("MKL_ENABLE_INSTRUCTIONS", "AVX2")

import pytest  # noqa: E402
import torch  # noqa: E402

#: resolved: ../shared may be a symbolic link, and prunekit records resolved data paths
SHARED_DATA = (Path(__file__).resolve().parents[2] / "shared" / "data").resolve()
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


def tiny_gemma(seed: int = 0, layers: int = 2, vocab: int = 256):
    """Gemma 3 text: a sliding-window layer (window 16, shorter than the test windows) and a full one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                              sliding_window=16, layer_types=["sliding_attention", "full_attention"][:layers],
                              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # Gemma's RMSNorms scale by (1 + w) and start at w = 0: make them matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0, 0.3)
    return model


FAMILIES = {"llama": tiny_llama, "opt": tiny_opt, "gemma": tiny_gemma}


def byte_tokenizer(add_bos: bool = False):
    """A 256-token byte-level tokenizer (ids 0-2 double as pad/bos/eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    inv = {i: ch for ch, i in vocab.items()}
    if add_bos:  # like Gemma's tokenizer: add_special_tokens=True puts BOS first
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(single=f"{inv[1]} $A", special_tokens=[(inv[1], 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=inv[0], bos_token=inv[1], eos_token=inv[2])


@pytest.fixture(params=list(FAMILIES))
def tiny_model(request):
    return FAMILIES[request.param]()


def save_tiny(path: Path, family: str = "llama", add_bos: bool = False, layers: int = 2,
              max_shard_size: str | None = None) -> Path:
    """A tiny model and its tokenizer saved in `path` (`max_shard_size`, e.g. "40KB": many small shards)."""
    FAMILIES[family](layers=layers).save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size
                                                              else {}))
    byte_tokenizer(add_bos).save_pretrained(path)
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


def write_arc(folder, n=3):
    """A tiny arc_easy test split in the ai2_arc schema."""
    folder.mkdir(exist_ok=True)
    docs = [{"id": str(i), "question": f"Which number is {i}?", "answerKey": "B",
             "choices": {"text": ["one", "two", "three"], "label": ["A", "B", "C"]}} for i in range(n)]
    (folder / "arc_easy.test.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    return folder


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `prunekit ARGV` run in-process."""
    from prunekit.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """In CI (CI=true) a skip is allowed only for a test that needs a CUDA GPU: a missing package or data
    file would otherwise hide a test from CI for ever."""
    if os.environ.get("CI", "").lower() not in ("1", "true"):
        return
    bad = [report for report in terminalreporter.stats.get("skipped", [])
           if "needs a CUDA GPU" not in str(report.longrepr)]
    if bad:
        terminalreporter.write_line(f"CI: {len(bad)} tests skipped for a reason other than 'needs a CUDA GPU':",
                                    red=True)
        for report in bad:
            terminalreporter.write_line(f"  {report.nodeid}: {report.longrepr}")
        terminalreporter._session.exitstatus = 1
