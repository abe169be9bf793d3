import torch

from linearised_laplace.core.lowrank import LowRank, Preconditioner, nystrom


def _dense(apply, n):
    return apply(torch.eye(n)).T  # rows e_j ↦ columns of the operator


def test_factored_form_solves_and_has_a_square_root():
    gen = torch.Generator().manual_seed(0)
    diag = torch.rand(7, generator=gen) + 0.1
    vectors = torch.randn(7, 3, generator=gen)
    values = torch.tensor([5.0, 1.0, 0.2])
    p = Preconditioner.diagonal_plus_low_rank(diag, LowRank(vectors, values))
    dense = torch.diag(diag) + vectors @ torch.diag(values) @ vectors.T
    torch.testing.assert_close(_dense(p.solve, 7), torch.linalg.inv(dense))
    half, half_t = _dense(p.half, 7), _dense(p.half_t, 7)
    torch.testing.assert_close(half @ half.T, torch.linalg.inv(dense))
    torch.testing.assert_close(half_t, half.T)
    jacobi = Preconditioner.diagonal(diag)
    torch.testing.assert_close(_dense(jacobi.solve, 7), torch.diag(1 / diag))


def test_nystrom_is_exact_at_full_width_and_below_the_matrix_otherwise():
    gen = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(30, 30, generator=gen))[0]
    spectrum = 10.0 ** -torch.arange(30.0) * 100
    matrix = basis @ torch.diag(spectrum) @ basis.T
    full = nystrom(lambda z: z @ matrix, 30, 30)
    torch.testing.assert_close(full.vectors @ torch.diag(full.values) @ full.vectors.T, matrix)
    low = nystrom(lambda z: z @ matrix, 30, 5, oversample=5, generator=gen)
    approx = low.vectors @ torch.diag(low.values) @ low.vectors.T
    assert float(torch.linalg.eigvalsh(matrix - approx).min()) > -1e-10  # M_r ⪯ M
    torch.testing.assert_close(low.values, spectrum[:5], rtol=1e-6, atol=1e-8)


def _counted(matrix):
    columns = []

    def matvec(z):
        columns.append(len(z))
        return z @ matrix

    return matvec, columns


def _above(threshold):
    return lambda rank, smallest: smallest > threshold


def test_growing_nystrom_doubles_until_its_last_eigenvalue_is_below_the_threshold():
    gen = torch.Generator().manual_seed(2)
    n = 200
    basis = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    spectrum = 1000.0 / torch.arange(1.0, n + 1, dtype=torch.float64)  # λ_i = 1000 / i
    matrix = basis @ torch.diag(spectrum) @ basis.T
    matvec, columns = _counted(matrix)
    grown = nystrom(
        matvec, n, 10, generator=torch.Generator().manual_seed(5), max_rank=80, grow=_above(30.0)
    )
    # λ_10 = 100 > 30: the rank doubles (to 20, 40, ...) until the estimate λ̂_r ≤ 30
    assert grown.rank in (20, 40, 80) and float(grown.values[-1]) <= 30.0
    assert columns[0] == 20 and sum(columns) == grown.rank + 10  # only new columns multiplied
    half = nystrom(
        lambda z: z @ matrix,
        n,
        10,
        generator=torch.Generator().manual_seed(5),
        max_rank=grown.rank // 2,
        grow=_above(30.0),
    )
    assert float(half.values[-1]) > 30.0  # the same draws, one doubling fewer: still above
    approx = grown.vectors @ torch.diag(grown.values) @ grown.vectors.T
    assert float(torch.linalg.eigvalsh(matrix - approx).min()) > -1e-8  # still M_r ⪯ M
    ratio = grown.values[:3] / spectrum[:3]  # Nyström's estimates lie below the top eigenvalues
    assert bool((ratio <= 1 + 1e-9).all() and ratio[0] > 0.85), ratio


def test_growing_nystrom_stops_at_the_exact_operator_and_a_fixed_one_is_unchanged():
    gen = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))[0]
    matrix = basis @ torch.diag(torch.linspace(100.0, 50.0, 30, dtype=torch.float64)) @ basis.T
    full = nystrom(lambda z: z @ matrix, 30, 8, max_rank=1000, grow=_above(1.0))
    torch.testing.assert_close(full.vectors @ torch.diag(full.values) @ full.vectors.T, matrix)
    fixed = nystrom(lambda z: z @ matrix, 30, 8, generator=torch.Generator().manual_seed(4))
    same = nystrom(
        lambda z: z @ matrix, 30, 8, generator=torch.Generator().manual_seed(4), max_rank=8
    )
    torch.testing.assert_close(fixed.values, same.values, rtol=0, atol=0)
