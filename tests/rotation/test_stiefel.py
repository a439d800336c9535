"""Cayley SGD / Cayley Adam keep Q orthonormal while they minimise."""

import pytest
import torch

from prunekit.rotation import Rotation, make_optimizer, orthonormality_error


@pytest.mark.parametrize("optimizer,lr", [("cayley-sgd", 0.05), ("cayley-adam", 0.05)])
@pytest.mark.parametrize("fix_ones", [False, True])
def test_optimizer_keeps_orthonormality_to_1e5(optimizer, lr, fix_ones):
    """Fit Q to a random orthonormal target from the identity with large steps; Q must stay on the
    manifold at every step (and with fix_ones keep Q 1 = 1) while the loss goes down."""
    torch.manual_seed(0)
    d = 48
    rotation = Rotation(d, fix_ones=fix_ones)
    X = torch.randn(256, d, dtype=torch.float64)
    target = X @ torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0]
    opt = make_optimizer(optimizer, rotation.parameters(), lr=lr, momentum=0.9)
    losses, worst = [], 0.0
    for _ in range(300):
        Q = rotation.matrix()
        loss = (X @ Q - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        worst = max(worst, orthonormality_error(rotation.matrix()))
    assert worst < 1e-5
    assert losses[-1] < 0.7 * losses[0]
    if fix_ones:
        ones = torch.ones(d, dtype=torch.float64)
        assert torch.allclose(rotation.matrix().detach() @ ones, ones, atol=1e-10)


def test_rotation_starts_at_the_identity():
    for fix_ones in (False, True):
        Q = Rotation(16, fix_ones=fix_ones).matrix().detach()
        assert torch.allclose(Q, torch.eye(16, dtype=Q.dtype), atol=1e-12)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adam", Rotation(4).parameters(), lr=0.1)
