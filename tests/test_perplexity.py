import math

import torch
import torch.nn.functional as F

from conftest import random_windows, tiny_llama
from prunekit.eval.perplexity import perplexity


def test_perplexity_is_exp_of_mean_token_nll():
    model = tiny_llama()
    windows = random_windows(n=3, seqlen=6)
    nll = []
    with torch.no_grad():
        for window in windows:
            logits = model(input_ids=window[None]).logits[0]
            log_probs = F.log_softmax(logits.double(), dim=-1)
            nll += [-log_probs[t, window[t + 1]].item() for t in range(5)]  # predict token t+1 from ≤ t
    expected = math.exp(sum(nll) / len(nll))
    assert math.isclose(perplexity(model, windows, progress=False), expected, rel_tol=1e-5)
    assert math.isclose(perplexity(model, windows, batch_size=2, progress=False), expected, rel_tol=1e-5)


def test_skip_first_drops_the_token_predicted_from_bos():
    model = tiny_llama()
    windows = random_windows(n=2, seqlen=6)
    with torch.no_grad():
        logits = model(input_ids=windows).logits.double()
    nll = -F.log_softmax(logits[:, 1:-1], dim=-1).gather(2, windows[:, 2:, None]).mean()
    assert math.isclose(perplexity(model, windows, skip_first=1, progress=False), math.exp(nll), rel_tol=1e-5)


def test_large_vocabularies_get_fewer_windows_per_pass(monkeypatch):
    import sys

    ppl = sys.modules["prunekit.eval.perplexity"]  # the module (the package exports the function by its name)

    model = tiny_llama()
    windows = random_windows(n=5, seqlen=6)
    vocab = model.config.vocab_size
    expected = perplexity(model, windows, batch_size=1, progress=False)
    monkeypatch.setattr(ppl, "MAX_LOGITS", 2 * 6 * vocab)  # room for two windows' logits
    assert ppl.windows_per_pass(model, windows, 32) == 2
    assert ppl.windows_per_pass(model, windows, 1) == 1
    sizes = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]),
                                             with_kwargs=True)
    assert math.isclose(perplexity(model, windows, batch_size=32, progress=False), expected, rel_tol=1e-5)
    handle.remove()
    assert sizes == [2, 2, 1]
    monkeypatch.setattr(ppl, "MAX_LOGITS", 1)  # never fewer than one window
    assert ppl.windows_per_pass(model, windows, 32) == 1
