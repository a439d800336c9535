import pytest
import torch

from prunekit.errors import UsageError
from prunekit.patterns import (Pattern, keep_in_matrix, keep_n_of_m, keep_per_row, max_nonzeros_per_group,
                               select_mask)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_n_of_m_keeps_exactly_n_per_group(n, m):
    scores = torch.randn(37, 64)
    mask = keep_n_of_m(scores, n, m)
    counts = mask.reshape(37, 64 // m, m).sum(dim=2)
    assert (counts == n).all()
    # the kept ones are the largest of their group
    groups = scores.reshape(37, -1, m)
    kept_min = torch.where(mask.reshape(37, -1, m), groups, torch.inf).amin(dim=2)
    dropped_max = torch.where(~mask.reshape(37, -1, m), groups, -torch.inf).amax(dim=2)
    assert (kept_min >= dropped_max).all()
    assert max_nonzeros_per_group(torch.randn(37, 64) * mask, m) <= n


def test_per_row_prunes_floor_of_target_in_every_row():
    scores = torch.randn(10, 33)
    mask = keep_per_row(scores, 0.5)
    assert ((~mask).sum(dim=1) == 16).all()  # floor(33 * 0.5)


def test_matrix_group_exact_count_with_ties():
    scores = torch.ones(8, 8)  # every score tied: a threshold would keep all or none
    mask = keep_in_matrix(scores, 0.25)
    assert (~mask).sum() == 16


def test_select_mask_dispatches():
    scores = torch.randn(4, 8)
    assert torch.equal(select_mask(scores, Pattern(2, 4), 0.5), keep_n_of_m(scores, 2, 4))
    assert torch.equal(select_mask(scores, Pattern(), 0.5, "row"), keep_per_row(scores, 0.5))


@pytest.mark.parametrize("text,message", [
    ("5:4", "0 < N <= M"), ("2:0", "positive integer"), ("2:-4", "positive integer"),
    ("dense", "unknown pattern"), ("0:4", "0 < N <= M"),
])
def test_bad_patterns(text, message):
    with pytest.raises(UsageError, match=message):
        Pattern.parse(text)


def test_pattern_sparsity():
    assert Pattern.parse("2:4").sparsity(0.1) == 0.5
    assert Pattern.parse("4:8").sparsity(0.1) == 0.5
    assert Pattern.parse("unstructured").sparsity(0.7) == 0.7


def test_columns_not_multiple_of_m():
    with pytest.raises(UsageError, match="multiple of M"):
        keep_n_of_m(torch.randn(3, 10), 2, 4)
