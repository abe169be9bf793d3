import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.posteriors.sampled import em_solver

from ..cases import classification_data, mlp


def test_em_solver_loosens_a_residual_tolerance_and_leaves_other_solvers_alone():
    assert em_solver(lla.CG(), 1e-3, torch.float32).rtol == 1e-3  # CG's own: 1e-4
    assert em_solver(lla.CG(), 1e-3, torch.float64).rtol == 1e-3  # CG's own: 1e-8
    assert em_solver(lla.CG(rtol=1e-2), 1e-3, torch.float32).rtol == 1e-2  # a looser one stays
    assert em_solver(lla.CG(max_iter=7), 1e-3, torch.float32).max_iter == 7
    sgd = lla.SGD(n_epochs=3)
    assert em_solver(sgd, 1e-3, torch.float32) is sgd
    with pytest.raises(ValueError, match=r"`em_rtol` must lie in \(0, 1\), got 0"):
        em_solver(lla.CG(), 0.0, torch.float32)


@pytest.mark.parametrize("block", [False, True])
def test_em_solves_its_steps_to_em_rtol_and_its_final_samples_to_the_solvers_own(block):
    net = mlp(n_out=3).double()
    x, y = classification_data(60)
    data = (x.double(), y)
    kw = {"prior_precision": 1.0, "n_samples": 4, "progress": False}
    steps, alphas, fits = {}, {}, {}
    for rtol in (1e-2, 1e-10):
        la = lla.SampledLaplace(net, solver=lla.CG(preconditioner_rank=0, block=block), **kw)
        history = la.optimize_prior_precision(data, max_iter=3, em_rtol=rtol, start="current")
        steps[rtol] = [h["solve_steps"] for h in history[1:]]
        alphas[rtol], fits[rtol] = float(la.prior_precision), la
        assert la.solve_info.converged and la.solve_info.rel_residual.max() < 1e-8  # the final
    assert all(a <= b for a, b in zip(steps[1e-2], steps[1e-10], strict=True))
    assert sum(steps[1e-2]) < sum(steps[1e-10]) - 2  # block CG reaches 1e-10 in 5 steps here
    assert alphas[1e-2] == pytest.approx(alphas[1e-10], rel=0.05)
    ref = lla.SampledLaplace(net, solver=lla.CG(preconditioner_rank=0, block=block), **kw)
    ref.prior_precision = fits[1e-2].prior_precision
    torch.testing.assert_close(fits[1e-2].posterior_samples, ref.fit(data).posterior_samples)
