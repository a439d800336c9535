import torch

from prunekit.methods.losa.ranks import allocate_ranks, reconstruction_error
from prunekit.methods.losa.schedule import cubic_sparsity, stage_mean_rank


def test_cubic_schedule_hits_zero_and_the_target_at_its_ends():
    for T in (1, 3, 5):
        assert cubic_sparsity(0, T, 0.7) == 0.0
        assert abs(cubic_sparsity(T, T, 0.7) - 0.7) < 1e-12
        values = [cubic_sparsity(t, T, 0.7) for t in range(T + 1)]
        assert values == sorted(values)
    steps = [cubic_sparsity(t, 5, 0.7) - cubic_sparsity(t - 1, 5, 0.7) for t in range(1, 6)]
    assert steps == sorted(steps, reverse=True)  # most weights go early


def test_average_rank_grows_per_stage_and_averages_r():
    ranks = [stage_mean_rank(t, 5, 8) for t in range(1, 6)]
    assert ranks == [6, 7, 8, 9, 10]
    assert stage_mean_rank(1, 1, 8) == 8


def test_ranks_follow_the_error_and_keep_the_average():
    errors = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
    ranks = allocate_ranks(errors, 8, 1, 16)
    assert sum(ranks) == 48
    assert ranks == sorted(ranks) and ranks[0] >= 1 and ranks[-1] <= 16
    assert allocate_ranks([1.0] * 4, 8) == [8, 8, 8, 8]


def test_ranks_are_clipped_and_the_rest_redistributed():
    ranks = allocate_ranks([100.0, 1e-6, 1e-6, 1e-6], 8, 1, 16)
    assert ranks[0] == 16 and min(ranks) >= 1 and sum(ranks) == 32


def test_reconstruction_error():
    Y = torch.randn(64, 8)
    assert reconstruction_error(Y, Y) == 0.0
    assert abs(reconstruction_error(Y, torch.zeros_like(Y)) - 1.0) < 1e-9
