import pytest
import torch

from prunekit import FistaConfig, SparseGPTConfig, WandaConfig
from prunekit.patterns import max_nonzeros_per_group
from prunekit.pruners.fista import fista, lipschitz, row_objective, search_lam, soft_threshold


def lasso_problem(out=6, dim=12, tokens=200, seed=0, noise=0.3):
    """G = X* X*ᵀ/n and C = W X X*ᵀ/n for correlated inputs, X* a perturbed copy of X."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(dim, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, tokens, generator=g,
                                                                              dtype=torch.float64)
    X_star = X + noise * torch.randn(dim, tokens, generator=g, dtype=torch.float64)
    W = torch.randn(out, dim, generator=g, dtype=torch.float64)
    G = X_star @ X_star.t() / tokens
    C = W @ X @ X_star.t() / tokens
    return W, X, X_star, G, C


def coordinate_descent(G, C, lam, sweeps=3000):
    """Reference LASSO solver: cyclic coordinate descent, w_j ← S_lam(c_j − Σ_{k≠j} G_jk w_k) / G_jj."""
    W = torch.zeros_like(C)
    for _ in range(sweeps):
        for j in range(G.shape[0]):
            rho = C[:, j] - W @ G[:, j] + W[:, j] * G[j, j]
            W[:, j] = soft_threshold(rho, lam) / G[j, j]
    return W


@pytest.mark.parametrize("lam", [0.05, 0.5])
def test_fista_matches_coordinate_descent(lam):
    W, _, _, G, C = lasso_problem()
    reference = coordinate_descent(G, C, lam)
    ours = fista(torch.zeros_like(W), G, C, lam, lipschitz(G), iters=3000)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert torch.equal(ours == 0, reference == 0)
    assert 0 < int((reference == 0).sum()) < reference.numel()  # the problem is neither trivial nor dense


def test_fista_matches_scikit_learn_lasso():
    sklearn = pytest.importorskip("sklearn.linear_model")
    W, X, X_star, G, C = lasso_problem(out=3)
    lam = 0.1
    ours = fista(torch.zeros_like(W), G, C, lam, lipschitz(G), iters=3000)
    tokens = X.shape[1]
    for r in range(W.shape[0]):
        # scikit-learn: (1 / 2n)‖y − A w‖² + alpha‖w‖₁ with A = X*ᵀ, y = (W X)_rᵀ is our row objective with lam = alpha
        model = sklearn.Lasso(alpha=lam, fit_intercept=False, tol=1e-12, max_iter=100000)
        model.fit(X_star.t().numpy(), (W[r] @ X).numpy())
        assert torch.allclose(ours[r], torch.from_numpy(model.coef_), atol=1e-5)
    assert tokens == 200


def test_scaled_fista_solves_the_same_problem():
    """FISTA on V = W* D with the weighted penalty lam Σ|V_ij|/D_j converges to the same W*."""
    W, _, _, G, C = lasso_problem(seed=3)
    lam = 0.2
    D = torch.diagonal(G).sqrt()
    Gs, Cs = G / D.unsqueeze(0) / D.unsqueeze(1), C / D.unsqueeze(0)
    V = fista(torch.zeros_like(W), Gs, Cs, lam, lipschitz(Gs), iters=3000, weights=1.0 / D)
    assert torch.allclose(V / D, coordinate_descent(G, C, lam), atol=1e-6)


def test_monotone_fista_never_increases_the_objective():
    W, _, _, G, C = lasso_problem(out=8, dim=16, seed=1, noise=0.05)
    lam, Lip = 0.05, lipschitz(G)
    W0 = W.clone()  # dense start: far from sparse, so the early iterations are the bumpy ones
    values = torch.stack([row_objective(fista(W0, G, C, lam, Lip, k, monotone=True), G, C, lam)
                          for k in range(0, 60)])
    steps = values[1:] - values[:-1]
    assert (steps <= 1e-10 * values[:-1].abs().clamp_min(1.0)).all()
    assert (values[-1] < values[0]).all()


def correlated_inputs(tokens=2048, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g) / dim**0.5
    scales = torch.logspace(-1, 1, dim)  # uneven feature scales, as in LLM activations
    return (torch.randn(tokens, dim, generator=g) @ mixing) * scales


def fista_pruned(config, W, X, X_dense=None):
    pruner = config.make_pruner(W.shape[1], "cpu")
    pruner.add_batch(X, X_dense)
    return pruner.prune(W).weight, pruner


@pytest.mark.parametrize("sparsity", [0.37, 0.5, 0.8])
@pytest.mark.parametrize("refit", [0, 20])
def test_bisection_and_rounding_hit_the_exact_count(sparsity, refit):
    W = torch.randn(40, 64, generator=torch.Generator().manual_seed(2))
    pruned, pruner = fista_pruned(FistaConfig(sparsity, refit_iters=refit), W, correlated_inputs())
    assert int((pruned == 0).sum()) == int(sparsity * W.numel())
    assert abs(pruner.extra["fista_sparsity"] - sparsity) <= 0.05  # the search got close before rounding


def test_search_stops_inside_the_tolerance():
    X = correlated_inputs().double()
    W = torch.randn(32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    G = X.t() @ X / X.shape[0]
    C = W @ G
    Wp, below, lam, updates, rounds = search_lam(W, G, C, lipschitz(G), 0.5, lam0=1e-6, steps=40, iters=50, tol=0.01)
    assert abs(float((Wp == 0).double().mean()) - 0.5) <= 0.01
    assert float((below == 0).double().mean()) <= 0.5
    assert 0 < updates < 40 and rounds == 40 and lam > 1e-6  # λ started far off: the bracket grew, then converged


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4)])
def test_n_m_projection_is_valid(pattern, n, m):
    W = torch.randn(24, 64, generator=torch.Generator().manual_seed(5))
    pruned, _ = fista_pruned(FistaConfig(pattern=pattern), W, correlated_inputs())
    assert max_nonzeros_per_group(pruned, m) <= n
    assert int((pruned != 0).sum()) == W.numel() * n // m  # the refit keeps every kept weight non-zero
    assert not torch.signbit(pruned[pruned == 0]).any()  # +0.0 zeros: -0.0 would break bit-exact 2:4 packing


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_fista_reconstructs_better_than_wanda_and_sparsegpt(pattern):
    X = correlated_inputs()
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))

    def error(config):
        pruner = config.make_pruner(W.shape[1], "cpu")
        pruner.add_batch(X)
        delta = (W - pruner.prune(W.clone()).weight) @ X.t()
        return float(delta.pow(2).sum() / (W @ X.t()).pow(2).sum())

    fista_error = error(FistaConfig(0.5, pattern))
    assert fista_error < error(WandaConfig(0.5, pattern))
    assert fista_error < error(SparseGPTConfig(0.5, pattern))


def test_paired_statistics_fit_the_dense_output():
    """With X* ≠ X, the pruner fits W* X* to W X: at zero sparsity it recovers that regression's solution."""
    X = correlated_inputs(dim=16)
    X_star = X + 0.3 * torch.randn(X.shape, generator=torch.Generator().manual_seed(7))
    W = torch.randn(8, 16, generator=torch.Generator().manual_seed(8))
    pruned, pruner = fista_pruned(FistaConfig(0.0, refit_iters=200, refit_damp=0.0), W, X_star, X)
    least_squares = torch.linalg.lstsq(X_star.double(), (X @ W.t()).double()).solution.t().float()
    assert torch.allclose(pruned, least_squares, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(pruned, W, atol=1e-2)


def test_logs_lambda_iterations_and_objective():
    W = torch.randn(16, 64)
    _, pruner = fista_pruned(FistaConfig(0.5, lam_steps=3, iters=7), W, correlated_inputs())
    extra = pruner.extra
    assert extra["iterations"] == 3 * 7 and extra["lam_updates"] <= 3
    assert extra["lam"] > 0 and extra["objective"] > 0 and 0 <= extra["rel_error"] <= extra["rel_error_rounded"]


@pytest.mark.parametrize("kwargs,match", [
    ({"error_correction": "inter"}, "error correction"),
    ({"warm_start": "magnitude"}, "warm start"),
    ({"iters": 0}, "iters"),
    ({"error_correction": "intra+inter", "parallel_layers": True}, "independent layers"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FistaConfig(**kwargs)
