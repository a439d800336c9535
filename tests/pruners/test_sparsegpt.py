import pytest
import torch

from prunekit import MagnitudeConfig, SparseGPTConfig, WandaConfig
from prunekit.layerwise import reconstruction_error
from prunekit.patterns import max_nonzeros_per_group


def correlated_inputs(tokens=2048, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g) / dim**0.5
    scales = torch.logspace(-1, 1, dim)  # uneven feature scales, as in LLM activations
    return (torch.randn(tokens, dim, generator=g) @ mixing) * scales


def pruned_error(config, W, X):
    pruner = config.make_pruner(W.shape[1], "cpu")
    pruner.add_batch(X)
    pruned = pruner.prune(W).weight
    return reconstruction_error(W, pruned, X), pruned


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern):
    X = correlated_inputs()
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    errors = {cfg.method: pruned_error(cfg, W, X)[0]
              for cfg in (MagnitudeConfig(0.5, pattern), WandaConfig(0.5, pattern), SparseGPTConfig(0.5, pattern))}
    assert errors["sparsegpt"] < min(errors["wanda"], errors["magnitude"])


def test_exact_sparsity_and_valid_n_m():
    X = correlated_inputs(dim=256)
    W = torch.randn(32, 256)
    _, pruned = pruned_error(SparseGPTConfig(0.6), W, X)
    assert (pruned == 0).sum() == int(0.6 * 32 * 128) * 2  # per block of 128 columns (all rows), exact count
    _, pruned = pruned_error(SparseGPTConfig(pattern="2:4"), W, X)
    assert max_nonzeros_per_group(pruned, 4) <= 2


def test_no_update_keeps_surviving_weights():
    X, W = correlated_inputs(), torch.randn(16, 64)
    _, plain = pruned_error(SparseGPTConfig(0.5, update=False), W, X)
    kept = plain != 0
    assert torch.equal(plain[kept], W[kept])
    err_update, updated = pruned_error(SparseGPTConfig(0.5), W, X)
    assert not torch.equal(updated[updated != 0], W[updated != 0])  # reconstruction moved the kept weights
    assert err_update < reconstruction_error(W, plain, X)


def test_dead_inputs_are_zeroed():
    X = correlated_inputs(dim=16)
    X[:, 3] = 0.0
    _, pruned = pruned_error(SparseGPTConfig(0.25), torch.randn(8, 16), X)
    assert (pruned[:, 3] == 0).all()


def test_blocksize_must_fit_m():
    with pytest.raises(ValueError, match="multiple of M"):
        SparseGPTConfig(pattern="3:5", blocksize=128)


def reference_sparsegpt(W, H, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01):
    """The paper's Algorithm 1 written the textbook way (column slices of W, explicit inverse)."""
    W = W.clone()
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0])
    Hinv = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    for i1 in range(0, W.shape[1], blocksize):
        i2 = min(i1 + blocksize, W.shape[1])
        W1, Q1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1), torch.zeros(W.shape[0], i2 - i1), Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            order = torch.argsort(tmp.flatten())
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
            mask1[order[: int(tmp.numel() * sparsity)]] = True
            mask1 = mask1.view_as(tmp)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:i + prunem] ** 2 / torch.diag(Hinv1)[i:i + prunem].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


@pytest.mark.parametrize("pattern,prunen,prunem", [("unstructured", 0, 0), ("2:4", 2, 4)])
def test_matches_textbook_algorithm(pattern, prunen, prunem):
    torch.set_default_dtype(torch.float64)  # compare the algorithms, not the rounding
    try:
        X = correlated_inputs(dim=192).double()
        W = torch.randn(24, 192, dtype=torch.float64)
        pruner = SparseGPTConfig(0.5, pattern).make_pruner(192, "cpu")
        pruner.H = torch.zeros(192, 192, dtype=torch.float64)  # accumulate in float64
        pruner.add_batch(X)
        H = pruner.H.clone()  # prune frees H once it has the inverse's factor
        ours = pruner.prune(W).weight
        theirs = reference_sparsegpt(W, H, 0.5, prunen, prunem)
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.equal(ours == 0, theirs == 0)
    assert torch.allclose(ours.double(), theirs, atol=1e-5)


def test_the_factor_outlives_the_hessian():
    """prune frees H (and its Cholesky factor) once the inverse's factor is built: the next operator of the group
    is pruned as by a fresh pruner, and the selection (`mask`) still answers."""
    X = correlated_inputs(dim=64)
    W1, W2 = torch.randn(16, 64), torch.randn(8, 64)
    shared = SparseGPTConfig(0.5).make_pruner(64, "cpu")
    shared.add_batch(X)
    mask = shared.mask(W2)
    first = shared.prune(W1).weight
    assert shared.H is None and shared._cholesky is None
    fresh = SparseGPTConfig(0.5).make_pruner(64, "cpu")
    fresh.add_batch(X)
    assert torch.equal(shared.prune(W2).weight, fresh.prune(W2).weight)
    assert torch.equal(shared.mask(W2), mask) and first.count_nonzero() == 16 * 32


@pytest.mark.parametrize("pattern,prunen,prunem", [("unstructured", 0, 0), ("2:4", 2, 4)])
def test_act_order_is_the_textbook_pass_on_permuted_columns(pattern, prunen, prunem):
    """act_order = the paper's pass on W Pᵀ with P H Pᵀ, P sorting the columns (N:M: whole groups) by descending
    diag(H), the result put back in W's order; and every N:M group stays one group."""
    torch.set_default_dtype(torch.float64)
    try:
        X = correlated_inputs(dim=192).double()[:, torch.randperm(192, generator=torch.Generator().manual_seed(2))]
        W = torch.randn(24, 192, dtype=torch.float64)
        pruner = SparseGPTConfig(0.5, pattern, act_order=True).make_pruner(192, "cpu")
        pruner.H = torch.zeros(192, 192, dtype=torch.float64)
        pruner.add_batch(X)
        H = pruner.H.clone()
        ours = pruner.prune(W).weight
        m = prunem or 1
        groups = torch.argsort(torch.diag(H).view(-1, m).sum(1), descending=True)
        perm = (groups.unsqueeze(1) * m + torch.arange(m)).reshape(-1)
        assert not torch.equal(perm, torch.arange(192))  # the order does change here
        theirs = torch.empty_like(W)
        theirs[:, perm] = reference_sparsegpt(W[:, perm], H[perm][:, perm], 0.5, prunen, prunem)
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.equal(ours == 0, theirs == 0)
    assert torch.allclose(ours, theirs, atol=1e-5)
    if prunen:
        assert max_nonzeros_per_group(ours, 4) == 2


@pytest.mark.parametrize("make", ["sparsegpt-fp8", "gptq"])
def test_act_order_is_the_plain_pass_on_permuted_inputs(make):
    """With FP8 rounding in the pass (SparseGPT's and GPTQ's), act_order = the natural-order pass on the inputs and
    columns permuted by act_order's P, put back; GPTQ keeps exactly the given zeros and returns them as its mask."""
    from prunekit.pruners.sparsegpt import GPTQConfig

    torch.set_default_dtype(torch.float64)
    try:
        X = correlated_inputs(dim=256).double()[:, torch.randperm(256, generator=torch.Generator().manual_seed(4))]
        W = torch.randn(24, 256, dtype=torch.float64)
        if make == "gptq":
            W[torch.rand(24, 256, generator=torch.Generator().manual_seed(3)) < 0.5] = 0.0

        def pruner(act_order, inputs):
            config = GPTQConfig(act_order=act_order) if make == "gptq" else \
                SparseGPTConfig(pattern="2:4", quantize="fp8", act_order=act_order)
            p = config.make_pruner(256, "cpu")
            p.H = torch.zeros(256, 256, dtype=torch.float64)
            p.add_batch(inputs)
            return p

        ordered = pruner(True, X)
        ours = ordered.prune(W)
        perm = ordered._order
        assert not torch.equal(perm, torch.arange(256))
        plain = pruner(False, X[:, perm]).prune(W[:, perm])
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.equal(ours.mask[:, perm], plain.mask)
    assert torch.allclose(ours.weight[:, perm], plain.weight, atol=1e-6)
    if make == "gptq":
        assert torch.equal(ours.mask, W != 0)
    else:
        assert max_nonzeros_per_group(ours.weight, 4) <= 2


def test_act_order_selection_answers_in_the_weights_order():
    """`mask` (selection only), after add_batch or load_gram as RotPruner loads it, answers in W's own order: the
    mask of the same pass without updates."""
    X, W = correlated_inputs(dim=320), torch.randn(16, 320)  # unstructured: 3 blocks of columns, in the pass's order
    X[:, 7] = 0.0  # a dead input
    for pattern in ("2:4", "unstructured"):
        config = SparseGPTConfig(0.5, pattern, update=False, act_order=True)
        fed, loaded, passing = (config.make_pruner(320, "cpu") for _ in range(3))
        fed.add_batch(X)
        passing.add_batch(X)
        loaded.load_gram(X.t() @ X)
        expected = passing.prune(W).weight != 0
        assert torch.equal(fed.mask(W), expected) and torch.equal(loaded.mask(W), expected)
        assert fed.mask(W).is_contiguous() and not expected[:, 7].any()
