"""The cost plan: its pilot's shrinking, its stages, its advice, and that it changes nothing."""

import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.methods import plan as plan_module

from ..cases import classification_data, mlp

QUIET = {"progress": False}


def _loader(data, batch_size: int = 16):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=batch_size)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("g_prior", [False, True])
def test_a_shrunk_pilot_takes_the_full_ems_steps_in_shrunk_units(likelihood, g_prior):
    # The plan's premise, exactly: the full data are k copies of the pilot's; the pilot runs at
    # α / k (the g-prior's own α) with γ scaled by 1 / k, and σ is learnt too for regression.
    torch.manual_seed(0)
    net = mlp(n_out=3).double()
    x = torch.randn(24, 3, dtype=torch.float64)
    if likelihood == "classification":
        y = torch.randint(0, 3, (24,))
    else:
        y = torch.randn(24, 3, dtype=torch.float64)
    k, alpha = 4, 2.0
    full_data = (x.repeat(k, 1), y.repeat(k) if y.ndim == 1 else y.repeat(k, 1))
    shrink = 1.0 if g_prior else 1 / k
    runs = []
    for data, share in (((x, y), 1 / k), (full_data, 1.0)):
        la = lla.ExactLaplace(
            net, likelihood, prior_precision=alpha * (shrink if share < 1 else 1.0),
            g_prior=g_prior, n_samples=2, **QUIET,
        )  # fmt: skip
        la._gamma_scale = share
        history = la.optimize_prior_precision(data, max_iter=5, tol=1e-12, mean="tangent")
        runs.append([(h["prior_precision"][0], h["sigma_noise"]) for h in history])
    pilot, full = runs
    assert len(pilot) == len(full) == 6
    assert [a for a, _ in full] == pytest.approx([a / shrink for a, _ in pilot], rel=1e-6)
    assert [s for _, s in full] == pytest.approx([s for _, s in pilot], rel=1e-6)


def test_the_plan_names_the_fits_stages_and_leaves_a_fitted_method_as_it_was():
    x, y = classification_data(96)
    loader = _loader((x, y))
    la = lla.SampledLaplace(mlp(), "classification", n_samples=4, solver=lla.CG(), **QUIET)
    la.optimize_prior_precision(loader, max_iter=3)
    samples, prior, history = la.posterior_samples.clone(), la.prior_precision, la.em_history
    costs, memory = la.em_costs, la.memory_plan
    plan = la.plan(loader, max_iter=3)
    assert set(plan.stages) == set(costs) == {"set-up", "EM", "final samples"}
    assert all(s["seconds"] > 0 and s["cpu_seconds"] > 0 for s in plan.stages.values())
    assert 1 <= plan.em_steps <= 3 and plan.memory.hold_features
    assert torch.equal(la.posterior_samples, samples) and torch.equal(la.prior_precision, prior)
    assert la.em_history is history and la.em_costs is costs and la.memory_plan is memory
    la(x[:3])  # still fitted, at its own prior
    text = str(plan)
    assert text.startswith("cost plan for SampledLaplace: CG as given, primal space")
    assert "pilot of 32 of the 96 training points" in text and "scaled by 3" in text
    assert set(la.plan(loader, em=False).stages) == {"fit"}


def test_a_dense_plan_costs_max_iter_steps_and_a_long_plan_says_what_cuts_it(monkeypatch):
    loader = _loader(classification_data(48))
    monkeypatch.setattr(plan_module, "ADVICE_SECONDS", 0.0)
    exact = lla.ExactLaplace(mlp(), "classification", n_samples=4, **QUIET).plan(loader, max_iter=7)
    assert exact.em_steps == 7 and "an upper bound" in exact.basis
    assert any("SampledLaplace" in a for a in exact.advice)
    sampled = lla.SampledLaplace(
        mlp(), "classification", solver=lla.CG(), feature_memory_gib=0, n_samples=4, **QUIET
    ).plan(loader, max_iter=2, mean="tangent")
    assert not sampled.memory.hold_features
    assert any("memory_gib=" in a for a in sampled.advice)
    assert any("mean='network'" in a for a in sampled.advice)
    assert "to cut it: hold the features" in str(sampled)


def test_bad_plan_settings_raise():
    la = lla.SampledLaplace(mlp(), "classification", **QUIET)
    loader = _loader(classification_data(32))
    with pytest.raises(ValueError, match="are EM settings"):
        la.plan(loader, em=False, max_iter=3)
    with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\]"):
        la.plan(loader, fraction=0.0)
