import pytest
import torch

import linearised_laplace as lla
from linearised_laplace.solvers import auto
from linearised_laplace.solvers.auto import choose_solver, dense_cost

from ..helpers import matrix_model


def test_small_problems_get_cholesky_in_the_cheaper_space():
    model = matrix_model(n=30, c=3, d=8)
    choice = choose_solver(model, None)
    assert isinstance(choice.solver, lla.Cholesky) and choice.space == "primal"
    assert "D = 8, n·C = 90" in choice.reason
    assert choose_solver(model, None, "dual").space == "dual"


def test_where_both_dense_solves_fit_the_dual_runs_when_it_costs_under_half_the_flops():
    wide = matrix_model(n=4, c=3, d=60)  # n·C = 12: the dual's 2·12²·60 flops ≪ the primal's
    assert dense_cost(60, 12, "dual")[0] * auto.DUAL_ADVANTAGE < dense_cost(60, 12, "primal")[0]
    choice = choose_solver(wide, None)
    assert isinstance(choice.solver, lla.Cholesky) and choice.space == "dual"
    assert "a dense dual solve is cheap" in choice.reason
    even = matrix_model(n=10, c=1, d=10)  # the same sizes: equal flops, the primal stays
    assert choose_solver(even, None).space == "primal"


def test_dense_cost_model():
    assert dense_cost(100, 1000, "primal") == (2.0 * 1000 * 100**2 + 100**3 / 3, 100**2 * 8 / 2**30)
    assert dense_cost(100, 10, "dual")[0] == 2.0 * 10**2 * 100 + 10**3 / 3


def test_beyond_the_dense_budget_cg_runs_in_the_space_with_fewer_unknowns(monkeypatch):
    monkeypatch.setattr(auto, "DENSE_FLOPS", 0.0)
    wide = matrix_model(n=4, c=3, d=20)  # n·C = 12 < D = 20
    tall = matrix_model(n=30, c=3, d=8)
    assert (choose_solver(wide, None).space, choose_solver(tall, None).space) == ("dual", "primal")
    assert isinstance(choose_solver(wide, None).solver, lla.CG)
    assert choose_solver(tall, None).solver == auto.PRIMAL_SOLVER
    assert choose_solver(wide, None, "primal").space == "primal"


def test_a_given_solver_is_kept_and_sgd_stays_primal():
    wide = matrix_model(n=4, c=3, d=20)
    sgd = lla.SGD(n_epochs=3)
    assert choose_solver(wide, sgd) == auto.Choice(sgd, "primal", choose_solver(wide, sgd).reason)
    assert choose_solver(wide, lla.CG()).space == "dual"
    assert "as given" in choose_solver(wide, sgd).reason


def test_sampled_laplace_reports_the_choice_and_refuses_unknown_solvers():
    from ..cases import classification_data, mlp

    x, y = classification_data(20)
    la = lla.SampledLaplace(mlp(), n_samples=2, progress=False).fit((x, y))
    assert la.solve_info.solver == "cholesky" and la.solve_info.reason.startswith("auto")
    with pytest.raises(TypeError, match="`solver` must be 'auto', lla.SGD"):
        lla.SampledLaplace(mlp(), solver="fast")
    torch.testing.assert_close(la.solve_info.rel_residual, la.solve_info.rel_residual)
