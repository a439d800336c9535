"""Every method's pruned perplexity on the real SmolLM2-135M, pinned: a change to any pruner's arithmetic
(a score, a damping, a mask rule, an update) moves its figure and fails here.

Slice: SmolLM2's real weights cut to its first 4 of 30 decoder layers (so that all twelve cases, SparseGPT's
column loop and FISTA's λ search included, fit the suite's time budget), 8 calibration windows × 128 tokens
of WikiText-2 validation (seed 0) and the first 4 windows × 256 tokens of wiki.test.raw, fp32 on the CPU; the
training methods run a few steps only. (The whole model's dense 24.14 is pinned in tests/test_smollm2.py.) The figures were
measured on the 2-core CPU with torch 2.13.0 (the CI machine); they repeat to about 1e-5 there. To re-pin
after an intended change, `python tests/test_methods_smollm2.py` prints every case's figure.
"""

from __future__ import annotations

import copy
import math
import sys
import time

import pytest

from conftest import SHARED_DATA
from prunekit import (FistaConfig, LosaConfig, MagnitudeConfig, RotPrunerConfig, RotPrunerStructuredConfig,
                      SliceGPTConfig, SparseGPTConfig, WandaChannelsConfig, WandaConfig, evaluate, load_model,
                      prune)
from prunekit.data import calibration_windows, evaluation_windows, read_text_file, tokenize

WIKI_TEST = SHARED_DATA / "wikitext2" / "wiki.test.raw"
WIKI_VALID = SHARED_DATA / "wikitext2" / "wiki.valid.tokens"
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not WIKI_TEST.is_file(), reason="needs ../shared/data")]

#: relative tolerance: far below what a change to a method's arithmetic moves (Wanda scored with ‖X‖² in place
#: of ‖X‖ moved its 50% and 2:4 figures by +18% and +36%), far above the run-to-run noise of one machine
REL = 2e-3
DENSE = 142837384.7140  # a 4-layer cut of the model predicts text badly: only changes matter

TRAIN = dict(steps=3, train_samples=4, train_seqlen=64)  # RotPruner, RotPruner-structured: 3 steps
CASES = {
    # name: (config, pinned WikiText-2 perplexity of the slice)
    "magnitude 50%": (lambda: MagnitudeConfig(sparsity=0.5), 908201276.0402),
    "wanda 50%": (lambda: WandaConfig(sparsity=0.5), 354000946.4780),
    "wanda 2:4": (lambda: WandaConfig(pattern="2:4"), 597997916.9721),
    "sparsegpt 50%": (lambda: SparseGPTConfig(sparsity=0.5), 198905809.2054),
    "sparsegpt 2:4": (lambda: SparseGPTConfig(pattern="2:4"), 437495197.5901),
    "sparsegpt-noupdate 50%": (lambda: SparseGPTConfig(sparsity=0.5, update=False), 410482794.8768),
    "fista 50%": (lambda: FistaConfig(sparsity=0.5, lam_steps=2, iters=4, refit_iters=3), 268604931.5411),
    "rotpruner wanda 50%": (lambda: RotPrunerConfig(sparsity=0.5, lr=3e-4, **TRAIN), 331046566.5354),
    "losa wanda 70%": (lambda: LosaConfig(sparsity=0.7, stages=2, train_data=str(WIKI_VALID), train_tokens=1024,
                                          train_seqlen=64, rmi_tokens=256, feature_windows=4), 834109214.3926),
    "slicegpt 25%": (lambda: SliceGPTConfig(slicing=0.25), 775366377.0026),
    "rotpruner-structured 25%": (lambda: RotPrunerStructuredConfig(slicing=0.25, **TRAIN), 747814877.7170),
    "wanda-channels 30%": (lambda: WandaChannelsConfig(channels=0.3), 337548404.1290),
}


LAYERS = 4


def first_layers(model, k: int):
    """A copy of `model` with only its first `k` decoder layers (the real weights of those layers)."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = k
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:k]
    small = type(model)(config).eval()
    missing, _ = small.load_state_dict(model.state_dict(), strict=False)
    assert not missing, missing
    return small


def load_slice():
    """(model, tokenizer, calibration windows, evaluation sets) of this file's protocol."""
    model, tokenizer = load_model("smollm2-135m")
    model = first_layers(model, LAYERS)
    calib = calibration_windows(tokenize(tokenizer, read_text_file(WIKI_VALID)[:200_000]), 8, 128, seed=0)
    windows = evaluation_windows(tokenize(tokenizer, read_text_file(WIKI_TEST)[:50_000]), 256, 4)
    return model, tokenizer, calib, {"wikitext2": (windows, None)}


@pytest.fixture(scope="module")
def smollm2_slice():
    return load_slice()


def pruned_perplexity(smollm2_slice, name: str) -> float:
    dense, tokenizer, calib, sets = smollm2_slice
    model = copy.deepcopy(dense)
    prune(model, CASES[name][0](), calib, progress=False, tokenizer=tokenizer)
    return evaluate(model, sets, progress=False)[0]["wikitext2"]


def test_dense_perplexity_of_the_slice(smollm2_slice):
    model, _, _, sets = smollm2_slice
    assert evaluate(model, sets, progress=False)[0]["wikitext2"] == pytest.approx(DENSE, rel=REL)


@pytest.mark.parametrize("name", list(CASES))
def test_pruned_perplexity_is_pinned(smollm2_slice, name):
    ppl = pruned_perplexity(smollm2_slice, name)
    assert math.isfinite(ppl) and ppl > DENSE
    assert ppl == pytest.approx(CASES[name][1], rel=REL), f"{name}: {ppl:.4f}, pinned {CASES[name][1]}"


if __name__ == "__main__":  # re-pin: print every figure of this file, measured on this machine
    fixture = load_slice()
    dense_sets = fixture[3]
    print(f"dense: {evaluate(fixture[0], dense_sets, progress=False)[0]['wikitext2']:.4f}", flush=True)
    for case in (sys.argv[1:] or CASES):
        t0 = time.perf_counter()
        print(f"{case}: {pruned_perplexity(fixture, case):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
