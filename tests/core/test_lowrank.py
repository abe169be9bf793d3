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
