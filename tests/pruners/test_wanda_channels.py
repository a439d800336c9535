"""wanda-channels: whole MLP channels removed by summed Wanda scores; the result is a plain, smaller model."""

import pytest
import torch

from conftest import random_windows, tiny_llama, tiny_opt
from prunekit import WandaChannelsConfig, prune
from prunekit.pruners.wanda_channels import channel_scores


def test_channel_scores_sum_wanda_over_a_channel():
    torch.manual_seed(0)
    Wg, Wu, Wd = torch.randn(6, 4), torch.randn(6, 4), torch.randn(4, 6)
    X, Z = torch.randn(50, 4), torch.randn(50, 6)
    s = channel_scores([Wg, Wu], X.pow(2).sum(0), Wd, Z.pow(2).sum(0))
    j = 2
    expected = sum((W[j].abs() * X.norm(dim=0)).sum() for W in (Wg, Wu)) + (Wd[:, j].abs() * Z[:, j].norm()).sum()
    assert torch.allclose(s[j], expected)


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_opt])
def test_channels_removed_and_model_reloads(make_model, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_model()
    result = prune(model, WandaChannelsConfig(channels=0.25), random_windows(4, 32), progress=False)
    assert result.details["wanda-channels"] == {"channels_before": 128, "channels_after": 96}
    assert abs(result.achieved_sparsity - 0.25) < 1e-9
    ids = random_windows(2, 16, seed=3)
    with torch.no_grad():
        logits = model(ids).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, logits, atol=1e-5)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in make_model().parameters())


def test_nm_pattern_and_sparsity_are_refused_naming_channels():
    """`sparsity` means zeros in pruned operators: a method that removes channels takes --channels."""
    with pytest.raises(ValueError, match="use --channels, not --pattern 2:4"):
        WandaChannelsConfig(pattern="2:4")
    with pytest.raises(ValueError, match="use --channels, not --sparsity"):
        WandaChannelsConfig(sparsity=0.3)
    assert WandaChannelsConfig(channels=0.3).sparsity == 0.0
