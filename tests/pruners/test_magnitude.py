import torch

from prunekit import MagnitudeConfig
from prunekit.patterns import max_nonzeros_per_group


def test_removes_smallest_magnitudes_over_the_matrix():
    W = torch.tensor([[0.1, -5.0, 0.2, 3.0], [-0.05, 4.0, 1.0, -0.3]])
    pruned = MagnitudeConfig(sparsity=0.5).make_pruner(4, "cpu").prune(W).weight
    assert torch.equal(pruned, torch.tensor([[0.0, -5.0, 0.0, 3.0], [0.0, 4.0, 1.0, 0.0]]))


def test_two_four():
    torch.manual_seed(1)
    pruned = MagnitudeConfig(pattern="2:4").make_pruner(16, "cpu").prune(torch.randn(8, 16)).weight
    assert max_nonzeros_per_group(pruned, 4) <= 2
