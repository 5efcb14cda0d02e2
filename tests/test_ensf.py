"""The ensemble score filter analysis (latent/ensf.py) against the exact Kalman posterior."""
from __future__ import annotations

import pytest
import torch

from latent.analysis import kalman_posterior
from latent.ensf import ensf_analysis, prior_score, schedule
from test_training import one_thread  # noqa: F401  (autouse fixture)


def _problem(seed, members=400, dim=4):
    """A correlated Gaussian prior ensemble, two observed components, noise variance 0.5, and the Kalman
    posterior of the ensemble's own mean and covariance."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    P = A @ A.T / dim + 0.5 * torch.eye(dim, dtype=torch.float64)
    m = torch.randn(dim, generator=g, dtype=torch.float64)
    H = torch.zeros(2, dim, dtype=torch.float64)
    H[0, 0] = H[1, 2] = 1.0
    r = torch.full((2,), 0.5, dtype=torch.float64)
    y = H @ m + torch.tensor([1.0, -0.5], dtype=torch.float64)
    X = m + torch.randn(members, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(P).T
    return X, y, H, r, *kalman_posterior(X.mean(0), torch.cov(X.T), y, H, r)


def test_schedule_is_the_forward_sde_of_alpha_and_beta():
    """Integrating the variance ODE dV/dt = 2 f V + g^2 of the forward SDE from V(0) = beta_0^2 gives beta_t^2,
    and d ln alpha / dt = f."""
    eps_a, eps_b = 0.05, 0.01
    V, steps = schedule(0.0, eps_a, eps_b)[1], 20000
    for i in range(steps):
        t = (i + 0.5) / steps
        _, _, f, g2 = schedule(t, eps_a, eps_b)
        V += (2 * f * V + g2) / steps
    alpha1, beta1, _, _ = schedule(1.0, eps_a, eps_b)
    assert V == pytest.approx(beta1, rel=1e-4) and alpha1 == pytest.approx(eps_a)
    h = 1e-6
    assert schedule(0.5, eps_a, eps_b)[2] == pytest.approx(
        (schedule(0.5 + h, eps_a, eps_b)[0] - schedule(0.5 - h, eps_a, eps_b)[0]) / (2 * h) / schedule(0.5, eps_a, eps_b)[0])


def test_prior_score_of_one_member_is_the_gaussian_score():
    x0, x = torch.randn(1, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(prior_score(x, x0, 0.7, 0.4), (0.7 * x0 - x) / 0.4)


@pytest.mark.parametrize("seed", [0, 1])
def test_tweedie_guided_ensf_matches_the_kalman_posterior(seed):
    """400 members: the Monte-Carlo error of a mean is ~0.05 posterior sd, of a sd ~4 %."""
    X, y, H, r, mean, cov = _problem(seed)
    Xa = ensf_analysis(X, y, H, r, torch.Generator().manual_seed(1), steps=100, guidance="tweedie")
    sd = cov.diag().sqrt()
    assert ((Xa.mean(0) - mean) / sd).abs().max() < 0.2
    assert ((torch.cov(Xa.T).diag().sqrt() / sd) - 1).abs().max() < 0.2


def test_damped_ensf_moves_toward_the_posterior_with_its_known_bias():
    """The paper's h(t) = 1 - t guidance: most of the way from the prior to the Kalman mean (it misses by
    0.3-0.5 posterior sd here), spread within 20 %."""
    X, y, H, r, mean, cov = _problem(0)
    Xa = ensf_analysis(X, y, H, r, torch.Generator().manual_seed(1), steps=100)
    sd = cov.diag().sqrt()
    gap, update = (Xa.mean(0) - mean).norm(), (X.mean(0) - mean).norm()
    assert gap < 0.5 * update and ((Xa.mean(0) - mean) / sd).abs().max() < 0.6
    assert ((torch.cov(Xa.T).diag().sqrt() / sd) - 1).abs().max() < 0.2


def test_kernel_dressed_prior_score_is_the_broadened_gaussian_score():
    """One member with kernel sigma diffuses to N(alpha x0, beta^2 + alpha^2 sigma^2) per component."""
    x0, x = torch.randn(1, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    k2 = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert torch.allclose(prior_score(x, x0, 0.7, 0.4, k2=k2), (0.7 * x0 - x) / (0.4 + 0.49 * k2))


@pytest.mark.parametrize("guidance", ["tweedie", "damped"])
def test_one_member_with_a_kernel_is_a_gaussian_prior(guidance):
    """A single member dressed in a N(0, sigma^2 I) kernel is the Gaussian prior N(x0, sigma^2 I): the Tweedie
    analysis (2000 particles) matches its Kalman posterior; the damped one lands between prior and posterior.
    Without the kernel the one member would pin every particle to itself."""
    X, y, H, r, *_ = _problem(0, members=10)
    x0, sigma = X[:1], 0.8
    prior_cov = sigma ** 2 * torch.eye(4, dtype=torch.float64)
    mean, cov = kalman_posterior(x0[0], prior_cov, y, H, r)
    Xa = ensf_analysis(x0, y, H, r, torch.Generator().manual_seed(3), steps=200, particles=2000, guidance=guidance,
                       kernel=sigma)
    sd = cov.diag().sqrt()
    if guidance == "tweedie":
        assert ((Xa.mean(0) - mean) / sd).abs().max() < 0.15
        assert ((torch.cov(Xa.T).diag().sqrt() / sd) - 1).abs().max() < 0.1
    else:
        assert (Xa.mean(0) - mean).norm() < 0.7 * (x0[0] - mean).norm()
    pinned = ensf_analysis(x0, y, H, r, torch.Generator().manual_seed(3), steps=200, particles=200, guidance=guidance)
    assert (pinned.mean(0) - x0[0]).norm() < 0.1 * (x0[0] - mean).norm()


@pytest.mark.parametrize("members", [3, 12])
def test_low_rank_solve_with_a_shared_dense_part_is_the_direct_solve(members):
    """``(A^T diag(w) A + diag(r) + G)^-1 b`` by Woodbury (fewer members than observations) or directly."""
    from latent.ensf import _solve_low_rank

    g = torch.Generator().manual_seed(4)
    p, obs = 5, 7
    w = torch.softmax(torch.randn(p, members, generator=g, dtype=torch.float64), 1)
    A = torch.randn(p, members, obs, generator=g, dtype=torch.float64)
    r = 0.1 + torch.rand(obs, generator=g, dtype=torch.float64)
    b = torch.randn(p, obs, generator=g, dtype=torch.float64)
    K = torch.randn(obs, obs, generator=g, dtype=torch.float64)
    for G in (None, K @ K.T):
        S = torch.einsum("pj,pjo,pjq->poq", w, A, A) + torch.diag(r) + (0 if G is None else G)
        torch.testing.assert_close(_solve_low_rank(w, A, r, b, G), torch.linalg.solve(S, b[..., None])[..., 0])


def test_tweedie_score_with_a_one_valued_kernel_gram_equals_the_general_path():
    """A kernel with one nonzero value (the latent components; the parameter none): the per-analysis
    eigendecomposition gives the same Tweedie score as the per-step dense solve; other kernels get no gram."""
    from latent.ensf import _kernel_gram, tweedie_likelihood_score

    g = torch.Generator().manual_seed(6)
    x, x0 = (torch.randn(4, 9, generator=g, dtype=torch.float64) for _ in range(2))
    H, y = torch.randn(12, 9, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    r = 0.1 + torch.rand(12, generator=g, dtype=torch.float64)
    k2 = torch.full((9,), 0.3, dtype=torch.float64)
    k2[-1] = 0.0
    gram = _kernel_gram(H, r, k2)
    for alpha, beta2 in ((0.9, 0.2), (0.3, 0.9)):
        torch.testing.assert_close(tweedie_likelihood_score(x, x0, alpha, beta2, y, H, r, k2, gram),
                                   tweedie_likelihood_score(x, x0, alpha, beta2, y, H, r, k2))
    k2[0] = 0.5
    assert _kernel_gram(H, r, k2) is None and _kernel_gram(H, r, torch.zeros(9, dtype=torch.float64)) is None


def test_implicit_damped_step_is_stable_on_a_stiff_likelihood_and_consistent_otherwise():
    """Precise observations (noise variance 1e-4) and 20 pseudo-steps: the explicit damped step diverges, the
    implicit one lands the observed components on the data; on the mild problem both agree to O(dt)."""
    X, y, H, r, mean, cov = _problem(0, members=200)
    stiff = torch.full_like(r, 1e-4)
    g = torch.Generator
    explicit = ensf_analysis(X, y, H, stiff, g().manual_seed(1), steps=20)
    assert not bool(torch.isfinite(explicit).all()) or explicit.abs().max() > 1e6
    for h in (H, None):
        yy, rr = (y, stiff) if h is not None else (X.mean(0) + 1.0, torch.full((4,), 1e-4, dtype=torch.float64))
        implicit = ensf_analysis(X, yy, h, rr, g().manual_seed(1), steps=20, implicit=True, kernel=0.5)
        observed = implicit @ (H.T if h is not None else torch.eye(4, dtype=torch.float64))
        assert bool(torch.isfinite(implicit).all()) and (observed.mean(0) - yy).abs().max() < 0.05
    a = ensf_analysis(X, y, H, r, g().manual_seed(1), steps=400)
    b = ensf_analysis(X, y, H, r, g().manual_seed(1), steps=400, implicit=True)
    assert (a.mean(0) - b.mean(0)).abs().max() < 0.05 * (X.mean(0) - mean).abs().max()
    with pytest.raises(ValueError, match="implicit"):
        ensf_analysis(X, y, H, r, guidance="tweedie", implicit=True)


def test_zero_kernel_is_no_kernel():
    X, y, H, r, *_ = _problem(1, members=12)
    for guidance in ("tweedie", "damped"):
        a = ensf_analysis(X, y, H, r, torch.Generator().manual_seed(1), steps=20, guidance=guidance)
        b = ensf_analysis(X, y, H, r, torch.Generator().manual_seed(1), steps=20, guidance=guidance, kernel=0.0)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="kernel"):
        ensf_analysis(X, y, H, r, kernel=-1.0)


def test_bad_options_are_clear_errors():
    X, y, H, r, *_ = _problem(0, members=10)
    with pytest.raises(ValueError, match="guidance"):
        ensf_analysis(X, y, H, r, guidance="exact")
    with pytest.raises(ValueError, match="steps >= 1"):
        ensf_analysis(X, y, H, r, steps=0)


@pytest.mark.parametrize("members, obs", [(5, 20), (20, 5)])
def test_low_rank_solve_equals_the_direct_solve(members, obs):
    """The Tweedie guidance's (A^T W A + R)^-1 b: Woodbury (members < obs, one weight exactly zero) and direct."""
    from latent.ensf import _solve_low_rank

    g = torch.Generator().manual_seed(0)
    w = torch.softmax(5 * torch.randn(3, members, generator=g, dtype=torch.float64), 1)
    w[0] = 0.0
    w[0, 1] = 1.0  # one-hot weights: the high-dimensional case
    A = torch.randn(3, members, obs, generator=g, dtype=torch.float64)
    r = torch.rand(obs, generator=g, dtype=torch.float64) + 0.1
    b = torch.randn(3, obs, generator=g, dtype=torch.float64)
    S = torch.einsum("pj,pjo,pjq->poq", w, A, A) + torch.diag(r)
    assert torch.allclose(_solve_low_rank(w, A, r, b), torch.linalg.solve(S, b[..., None])[..., 0], atol=1e-10)


def test_identity_observation_without_H_equals_the_explicit_identity():
    """``H = None`` (LD-EnSF's latent observation of every component) gives the same analysis as ``H = I`` for
    the same noise; the mixture weights equal the softmax of the squared distances."""
    from latent.ensf import posterior_weights

    g = torch.Generator().manual_seed(3)
    X = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y, r = torch.randn(5, generator=g, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)
    for guidance in ("damped", "tweedie"):
        a = ensf_analysis(X, y, None, r, torch.Generator().manual_seed(1), steps=20, guidance=guidance)
        b = ensf_analysis(X, y, eye, r, torch.Generator().manual_seed(1), steps=20, guidance=guidance)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    direct = torch.softmax(-torch.cdist(x, 0.7 * X).pow(2) / (2 * 0.2), dim=1)
    torch.testing.assert_close(posterior_weights(x, X, 0.7, 0.2), direct, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="every component"):
        ensf_analysis(X, y[:3], None, r[:3])


def test_fused_damped_identity_step_equals_the_general_loop():
    """Damped guidance with ``H = None`` and no clipping runs a regrouped loop; a clip too large to act takes the
    general one: the same analysis."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(10, 6, generator=g, dtype=torch.float64)
    y, r = torch.randn(6, generator=g, dtype=torch.float64), torch.linspace(0.2, 0.9, 6, dtype=torch.float64)
    fused = ensf_analysis(X, y, None, r, torch.Generator().manual_seed(2), steps=30, eps_beta=0.01)
    general = ensf_analysis(X, y, None, r, torch.Generator().manual_seed(2), steps=30, eps_beta=0.01, clip=1e300)
    torch.testing.assert_close(fused, general, rtol=1e-9, atol=1e-9)
