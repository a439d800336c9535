import torch

from prunekit import WandaConfig
from prunekit.patterns import max_nonzeros_per_group


def test_scores_are_weight_magnitude_times_input_norm():
    # inputs: column norms ||X_0|| = 5 (3, 4), ||X_1|| = 1, ||X_2|| = 2
    X = torch.tensor([[3.0, 1.0, 0.0], [4.0, 0.0, 2.0]])
    W = torch.tensor([[1.0, -2.0, 0.5], [-0.1, 3.0, -1.0]])
    pruner = WandaConfig(sparsity=1 / 3).make_pruner(3, "cpu")
    pruner.add_batch(X[:1])
    pruner.add_batch(X[1:])  # statistics accumulate over batches
    expected = torch.tensor([[5.0, 2.0, 1.0], [0.5, 3.0, 2.0]])
    assert torch.allclose(pruner.scores(W), expected)
    # one weight per row goes: the lowest score of each row
    pruned = pruner.prune(W).weight
    assert torch.equal(pruned, torch.tensor([[1.0, -2.0, 0.0], [0.0, 3.0, -1.0]]))


def test_comparison_group_is_the_row():
    torch.manual_seed(0)
    W = torch.randn(16, 40)
    W[0] *= 100  # a row of huge weights must still lose half of them
    pruner = WandaConfig(sparsity=0.5).make_pruner(40, "cpu")
    pruner.add_batch(torch.randn(64, 40))
    pruned = pruner.prune(W).weight
    assert ((pruned == 0).sum(dim=1) == 20).all()


def test_n_m_pattern_valid():
    torch.manual_seed(0)
    pruner = WandaConfig(pattern="4:8").make_pruner(64, "cpu")
    pruner.add_batch(torch.randn(100, 64))
    pruned = pruner.prune(torch.randn(32, 64)).weight
    assert max_nonzeros_per_group(pruned, 8) <= 4
    assert (pruned == 0).float().mean() == 0.5
