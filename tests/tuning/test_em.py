import functools
import itertools
import math
import warnings

import pytest
import torch
from torch import nn

import linearised_laplace as lla
from linearised_laplace.posteriors.expectation import EStep
from linearised_laplace.tuning.em import run_em
from linearised_laplace.tuning.mackay import MAX_EXTRAPOLATION, PRECISION_RANGE
from linearised_laplace.tuning.state import EMState


def _regression_problem(n=100, d=40):
    """y = Xθ + ε with decaying feature scales, as a linear network (J = X), γ well inside (1, d−1)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen) * torch.logspace(0, -2, d)
    y = x @ (0.5 * torch.randn(d, generator=gen)) + 0.3 * torch.randn(n, generator=gen)
    net = nn.Linear(d, 1, bias=False)
    nn.init.zeros_(net.weight)
    return net, x, y[:, None]


def _exact_fixed_point_and_evidence(x, y, sigma):
    d = x.shape[1]
    ggn = x.T @ x / sigma**2
    mu = torch.linalg.eigvalsh(ggn)
    rhs = x.T @ y[:, 0] / sigma**2

    def evidence(alpha):
        h = ggn + alpha * torch.eye(d)
        theta = torch.linalg.solve(h, rhs)
        resid = y[:, 0] - x @ theta
        return float(
            -0.5 * resid @ resid / sigma**2
            - 0.5 * alpha * theta @ theta
            - 0.5 * torch.logdet(h)
            + 0.5 * d * math.log(alpha)
            - len(y) * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
        )

    alpha = 1.0
    for _ in range(500):
        theta = torch.linalg.solve(ggn + alpha * torch.eye(d), rhs)
        alpha = float((mu / (mu + alpha)).sum() / (theta @ theta))
    return alpha, evidence


def test_exact_em_reaches_the_mackay_fixed_point_which_maximises_the_evidence():
    # R5, exact: the fixed point maximises the closed-form evidence (to grid resolution).
    net, x, y = _regression_problem()
    alpha, evidence = _exact_fixed_point_and_evidence(x, y, 0.3)
    grid = torch.logspace(-2, 3, 2001)
    best = float(grid[torch.tensor([evidence(float(a)) for a in grid]).argmax()])
    assert abs(math.log(best / alpha)) < 2 * math.log(grid[1] / grid[0])
    la = lla.ExactLaplace(net, "regression", sigma_noise=0.3, n_samples=2, progress=False)
    history = la.optimize_prior_precision(
        (x, y), max_iter=100, tol=1e-9, mean="tangent", update_sigma=False
    )
    assert abs(float(la.prior_precision) / alpha - 1) < 1e-6
    assert history[0]["prior_precision"] == [1.0] and len(history[-1]["gamma"]) == 1
    evidence_at = functools.partial(la.log_marginal_likelihood, mean="tangent")
    assert abs(float(evidence_at()) - evidence(float(la.prior_precision))) < 1e-8
    assert float(evidence_at(prior_precision=10 * alpha)) < float(evidence_at())


@pytest.mark.parametrize("gamma", ["function", "weight"])
def test_sampled_em_lands_within_ten_percent_of_the_fixed_point(gamma):
    # R5, sampled: K = 16 samples, default SGD; the noise is fixed across steps.
    net, x, y = _regression_problem()
    alpha, _ = _exact_fixed_point_and_evidence(x, y, 0.3)
    la = lla.SampledLaplace(net, "regression", sigma_noise=0.3, n_samples=4, progress=False)
    history = la.optimize_prior_precision(
        (x, y),
        max_iter=15,
        tol=1e-3,
        gamma=gamma,
        n_em_samples=16,
        mean="tangent",
        update_sigma=False,
    )
    assert abs(float(la.prior_precision) / alpha - 1) < 0.1
    assert len(history) >= 3 and la.posterior_samples.shape == (4, 40)


def test_noise_update_reaches_mackays_sigma():
    net, x, y = _regression_problem()
    la = lla.ExactLaplace(net, "regression", sigma_noise=1.0, n_samples=2, progress=False)
    la.optimize_prior_precision((x, y), max_iter=200, tol=1e-10, mean="tangent")  # σ by default
    alpha, sigma = float(la.prior_precision), float(la.sigma_noise)
    ggn = x.T @ x
    theta = torch.linalg.solve(ggn / sigma**2 + alpha * torch.eye(40), x.T @ y[:, 0] / sigma**2)
    gamma = float(
        (
            torch.linalg.eigvalsh(ggn / sigma**2) / (torch.linalg.eigvalsh(ggn / sigma**2) + alpha)
        ).sum()
    )
    resid = y[:, 0] - x @ theta
    assert abs(sigma**2 / (float(resid @ resid) / (100 - gamma)) - 1) < 1e-6
    assert abs(alpha / (gamma / float(theta @ theta)) - 1) < 1e-6


def test_run_em_stops_on_tolerance_or_max_iter():
    calls = []

    def e_step(state):
        calls.append(state.step)
        return EStep(torch.ones(4), torch.tensor([2.0]))

    start = EMState(0, torch.tensor([3.0]), 1.0, torch.zeros(4))
    ids = torch.zeros(4, dtype=torch.long)
    final = run_em(e_step, start, ids, max_iter=10, tol=1e-3, progress=False)
    assert final.converged and final.step == 2 and calls == [0, 1]  # 3 → 0.5 → 0.5
    assert [h["prior_precision"] for h in final.history] == [[3.0], [0.5], [0.5]]
    with pytest.warns(lla.ConvergenceWarning, match="Raise max_iter"):
        capped = run_em(e_step, start, ids, max_iter=1, tol=1e-3, progress=False)
    assert capped.step == 1 and not capped.converged
    assert [h.get("converged") for h in capped.history] == [None, False]


def _em_with_update(update, start: float, max_iter: int = 40, tol: float = 1e-6):
    """``run_em`` where MacKay's update of ``α`` is ``update(α)`` (``γ = 4·update``, ``‖θ̄‖² = 4``)."""

    def e_step(state):
        return EStep(torch.ones(4), 4 * update(state.precision))

    state = EMState(0, torch.tensor([start], dtype=torch.float64), 1.0, torch.zeros(4))
    ids = torch.zeros(4, dtype=torch.long)
    return run_em(e_step, state, ids, max_iter=max_iter, tol=tol, clip_gamma=False)


def test_em_interpolates_a_two_cycle_to_its_fixed_point():
    # log α ↦ 2 log 3 − log α: plain MacKay steps alternate α = 100 and 0.09 forever; the
    # secant inside the bracket [0.09, 100] lands on the root of the linear g: 100 → 0.09 → 3.
    final = _em_with_update(lambda a: 9.0 / a, 100.0)
    assert final.converged and final.step == 3
    assert final.history[2]["secant"] == [pytest.approx(0.5, rel=1e-12)]
    assert float(final.history[2]["prior_precision"][0]) == pytest.approx(3.0, rel=1e-12)
    small = _em_with_update(lambda a: 9.0 / a, 4.0)  # a two-cycle 4 ↔ 2.25, within a factor 2
    assert small.converged and abs(float(small.precision) - 3.0) < 1e-6


@pytest.mark.parametrize("rho", [-0.4, -0.9, -1.5])
def test_an_oscillation_lands_in_one_interpolated_step_where_g_is_linear(rho):
    # log(α/8) ↦ ρ log(α/8): the θ* oscillation (ρ ≈ −0.4), a slow one, and one that grows;
    # plain steps need log(1e-6)/log|ρ| steps (or never end), the secant one and a check.
    final = _em_with_update(lambda a: 8.0 * (a / 8.0) ** rho, 22.0)
    assert final.converged and final.step == 3
    assert float(final.history[2]["prior_precision"][0]) == pytest.approx(8.0, rel=1e-12)
    assert 0 < final.history[2]["secant"][0] < 1


def test_an_interpolated_step_stays_inside_its_bracket_where_g_is_not_linear():
    # a nonlinear oscillating map: every iterate after a reversal lies between the last two
    def update(a):
        u = (a / 8.0).log()
        return 8.0 * (-0.6 * u - 0.3 * u**3).exp()

    final = _em_with_update(update, 30.0)
    assert final.converged and abs(math.log(float(final.precision) / 8.0)) < 1e-6
    alphas = [h["prior_precision"][0] for h in final.history]
    interpolated = [k for k in range(2, len(alphas)) if final.history[k]["secant"][0] < 1]
    assert interpolated
    for k in interpolated:
        assert min(alphas[k - 2 : k]) < alphas[k] < max(alphas[k - 2 : k])


def test_em_extrapolates_a_creeping_approach_by_the_secant():
    # log α ↦ ½ log α + log 7: plain MacKay steps halve the distance to α = 49 each time.
    final = _em_with_update(lambda a: 7.0 * a.sqrt(), 1.0)
    assert final.converged and final.step == 3  # 1 → 7 → 49 (the secant is exact), then check
    assert final.history[2]["secant"] == [pytest.approx(2.0, rel=1e-12)]
    assert float(final.precision) == pytest.approx(49.0, rel=1e-12)
    # contraction by 0.78 per step: 64 plain steps to tol; the secant's step is capped at 4×
    slow = _em_with_update(lambda a: 50.0 * (a / 50.0) ** 0.78, 1.0, max_iter=60)
    assert slow.converged and slow.step < 25
    assert max(h.get("secant", [1.0])[0] for h in slow.history) == MAX_EXTRAPOLATION
    assert float(slow.precision) == pytest.approx(50.0, rel=1e-5)
    # barely contracting (a far start, α falling by a near-constant factor): no leap
    far = _em_with_update(lambda a: 50.0 * (a / 50.0) ** 0.95, 1e6, max_iter=3)
    assert [h["secant"] for h in far.history[1:]] == [[1.0]] * 3


def test_a_creeping_approach_stops_within_tol_of_the_fixed_point_not_when_its_steps_are_small():
    # contraction by 0.9 per step (too slow to extrapolate): steps fall below tol = 0.01 while
    # α is still 10 % short of the fixed point 50; the stopping rule waits for the distance.
    final = _em_with_update(lambda a: 50.0 * (a / 50.0) ** 0.9, 30.0, max_iter=100, tol=1e-2)
    assert final.converged
    assert abs(math.log(float(final.precision) / 50.0)) < 1e-2
    steps = [
        (abs(math.log(now["proposed"][0] / before["prior_precision"][0])), now["distance"][0])
        for before, now in itertools.pairwise(final.history)
    ]
    assert any(step < 1e-2 <= distance for step, distance in steps)  # where |g| < tol misled


def test_a_creeping_noise_update_stops_within_tol_of_its_fixed_point():
    # log σ ↦ 0.9 log σ + 0.1 log 0.1, α fixed at 1: steps fall below tol while σ is ~10 % off.
    final = _noise_em(1.8)
    assert final.converged and abs(math.log(final.sigma / 0.1)) < 1e-2


def _noise_em(exponent: float, max_iter: int = 200):
    """EM on ``σ`` alone, whose noise update is ``log(σ/0.1) ↦ (exponent/2) log(σ/0.1)``."""

    def e_step(state):
        residual_sq = 96 * 0.1**2 * (state.sigma / 0.1) ** exponent  # σ² = ‖r‖² / (n − γ)
        return EStep(torch.ones(4), torch.tensor([4.0]), residual_sq=residual_sq)

    state = EMState(0, torch.tensor([1.0], dtype=torch.float64), 1.0, torch.zeros(4))
    ids = torch.zeros(4, dtype=torch.long)
    return run_em(
        e_step,
        state,
        ids,
        max_iter=max_iter,
        tol=1e-2,
        n_observations=100,
        update_sigma=True,
        clip_gamma=False,
    )


def test_an_oscillating_noise_update_is_interpolated_to_its_fixed_point():
    # log σ ↦ −1.1 log σ (about log 0.1): plain steps overshoot by more each time, as
    # σ² = ‖r‖² / (n·C − γ) did on an overfit network; the secant interpolates the reversal
    final = _noise_em(-2.2, max_iter=30)
    assert final.converged and abs(math.log(final.sigma / 0.1)) < 1e-2
    assert 0 < min(h["sigma_secant"][0] for h in final.history[1:]) < 1


def test_em_is_bounded_and_warns_when_it_runs_away():
    with pytest.warns(lla.ConvergenceWarning, match="reached the bound"):
        final = _em_with_update(lambda a: a**2, 1e8)  # the runaway a γ floor of 1 caused
    assert float(final.precision) == PRECISION_RANGE[1] and not final.converged
    assert final.step < 5  # stops once pinned at the bound


def test_em_turns_a_failed_factorisation_and_a_nan_update_into_divergence_errors():
    def failing(state):
        raise torch.linalg.LinAlgError("linalg.cholesky: The factorization could not be completed")

    state = EMState(0, torch.tensor([1e30]), 1.0, torch.zeros(4))
    ids = torch.zeros(4, dtype=torch.long)
    with pytest.raises(lla.DivergenceError, match=r"EM step 1 at prior precision.*moderate"):
        run_em(failing, state, ids, max_iter=3, tol=1e-3)
    with pytest.raises(lla.DivergenceError, match="MacKay update"):
        _em_with_update(lambda a: a * float("nan"), 1.0)


@pytest.mark.parametrize("method", [lla.ExactLaplace, lla.SampledLaplace])
def test_em_from_a_huge_prior_precision_comes_back_without_a_linalg_error(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(40, 3)
    y = torch.randn(40, 2)
    kw = {"sigma_noise": 0.5, "n_samples": 4, "progress": False}
    ref = lla.ExactLaplace(net, "regression", prior_precision=1.0, **kw)
    ref.optimize_prior_precision((x, y), max_iter=40)
    la = method(net, "regression", prior_precision=1e8, **kw)
    history = la.optimize_prior_precision((x, y), max_iter=40)
    assert history[-1]["converged"]
    assert 0.2 < float(la.prior_precision / ref.prior_precision) < 5  # not 1e25


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_iter": 0}, "`max_iter` must be an integer >= 1"),
        ({"tol": 0.0}, "`tol` must be > 0"),
        ({"gamma": "trace"}, "`gamma` must be one of"),
        ({"mean": "map"}, "`mean` must be 'auto' or one of 'tangent', 'affine', 'network'"),
        ({"n_em_samples": 0}, "`n_em_samples` must be an integer >= 1"),
        ({"update_sigma": True}, "needs a regression"),
    ],
)
def test_bad_em_settings_raise_before_any_work(kwargs, match):
    la = lla.SampledLaplace(nn.Linear(3, 2), n_samples=2, progress=False)
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match=match):
        la.optimize_prior_precision((x, y), **kwargs)


def test_em_takes_full_steps_again_after_one_overshoot():
    # A far start whose first update overshoots (as an unconverged first E-step does), then an
    # update that no longer depends on α: one interpolated step, then MacKay's full steps again,
    # rather than ever smaller ones towards α = 190.
    def update(a):
        return torch.where(a < 10, torch.full_like(a, 1e5), torch.full_like(a, 190.0))

    final = _em_with_update(update, 1.0)
    secants = [h["secant"][0] for h in final.history[1:4]]
    assert secants[0] == 1.0 and 0 < secants[1] < 1 and secants[2] == 1.0
    assert final.converged and final.step == 4
    assert float(final.precision) == pytest.approx(190.0, rel=1e-12)


def test_an_impossible_sampled_gamma_warns_that_the_samples_are_unconverged():
    def e_step(gamma):
        return lambda state: EStep(torch.ones(4), torch.tensor([gamma]), torch.zeros(2, 4))

    start = EMState(0, torch.tensor([3.0]), 1.0, torch.zeros(4))
    ids = torch.zeros(4, dtype=torch.long)
    with pytest.warns(lla.ConvergenceWarning, match="far from converged"):
        run_em(e_step(40.0), start, ids, max_iter=1, tol=10.0, progress=False)
    with warnings.catch_warnings(record=True) as caught:  # within the MC error of 4 + 4·2
        warnings.simplefilter("always")
        state = run_em(e_step(11.0), start, ids, max_iter=2, tol=10.0, progress=False)
    assert not [w for w in caught if "far from converged" in str(w.message)]
    assert state.history[-1]["clipped"] and not state.converged  # clipped: no evidence


@pytest.mark.parametrize(
    ("gamma", "solved", "converges"),
    [(2.0, True, True), (2.0, False, False), (40.0, True, False)],  # D = 4: γ̂ = 40 is clipped
)
def test_only_a_step_with_an_unclipped_gamma_and_solved_samples_counts_toward_convergence(
    gamma, solved, converges
):
    def e_step(state):
        return EStep(torch.ones(4), torch.tensor([gamma]), torch.zeros(2, 4), solved=solved)

    start = EMState(0, torch.tensor([0.5]), 1.0, torch.zeros(4))  # γ/‖θ̄‖² = γ/4
    ids = torch.zeros(4, dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = run_em(e_step, start, ids, max_iter=4, tol=1e-6, progress=False)
    assert state.converged is converges
    assert [r["converged"] for r in state.history[1:]] == [False] * (len(state.history) - 2) + [
        converges
    ]
    assert all(r["solved"] is solved for r in state.history[1:])
    unconverged = [w for w in caught if "EM did not converge" in str(w.message)]
    if not converges:
        (warning,) = unconverged
        cause = "clipped" if gamma > 4 else "missed their solver's tolerance"
        assert cause in str(warning.message)
