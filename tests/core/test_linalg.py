import pytest
import torch

from linearised_laplace.core.linalg import (
    add_diagonal,
    add_gram,
    block_conjugate_gradient,
    conjugate_gradient,
    symmetrise_upper,
    top_eigenvalue,
)


def _spd(n=12, seed=0):
    q = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))[0]
    return q @ torch.diag(torch.logspace(0, 3, n)) @ q.T


def test_cg_solves_each_row_and_warm_starts():
    h = _spd()
    rhs = torch.randn(3, 12)
    x, n_iter, res = conjugate_gradient(lambda z: z @ h, rhs, rtol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(h, rhs.T).T, rtol=1e-9, atol=1e-12)
    assert n_iter <= 40 and bool((res < 1e-12).all())
    _, warm_iter, _ = conjugate_gradient(lambda z: z @ h, rhs, x, rtol=1e-12)
    assert warm_iter <= 1


def test_cg_respects_max_iter():
    h = _spd()
    _, n_iter, res = conjugate_gradient(lambda z: z @ h, torch.randn(2, 12), rtol=1e-14, max_iter=3)
    assert n_iter == 3 and bool((res > 1e-14).all())


def _outliers(n=60, n_out=12, seed=0):
    """SPD with ``n_out`` eigenvalues spread over 1…10⁴ and the rest in [1, 2]."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    spectrum = torch.cat([torch.logspace(0, 4, n_out), 1 + torch.rand(n - n_out, generator=gen)])
    return q @ torch.diag(spectrum.double()) @ q.T


def test_block_cg_solves_every_row_in_fewer_iterations_than_cg():
    h = _outliers()
    rhs = torch.randn(12, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = torch.linalg.solve(h, rhs.T).T
    x, n_iter, res = block_conjugate_gradient(lambda z: z @ h, rhs, rtol=1e-12)
    torch.testing.assert_close(x, exact, rtol=1e-9, atol=1e-11)
    true = (rhs - x @ h).norm(dim=-1) / rhs.norm(dim=-1)
    assert bool((res < 1e-12).all()) and bool((true < 1e-10).all())
    _, row_iter, _ = conjugate_gradient(lambda z: z @ h, rhs, rtol=1e-12)
    # 12 directions span the 12 outliers' eigenvectors after one step; then the [1, 2] cluster
    assert n_iter <= 10 < row_iter
    _, warm_iter, _ = block_conjugate_gradient(lambda z: z @ h, rhs, x, rtol=1e-11)
    assert warm_iter == 0


def test_block_cg_drops_dependent_directions_and_preconditions():
    h = _spd()
    b = torch.randn(2, 12, dtype=torch.float64)
    rhs = torch.cat([b, b, 3 * b[:1], torch.zeros(1, 12, dtype=torch.float64)])  # rank 2
    calls = []

    def matvec(z):
        calls.append(z.shape[0])
        return z @ h

    jacobi = h.diagonal()
    x, n_iter, res = block_conjugate_gradient(
        matvec, rhs, rtol=1e-12, preconditioner=lambda r: r / jacobi
    )
    torch.testing.assert_close(x, torch.linalg.solve(h, rhs.T).T, rtol=1e-9, atol=1e-12)
    assert calls[0] == 2  # the first block holds only the 2 independent directions
    assert bool((res[:5] < 1e-12).all()) and float(x[5].abs().max()) == 0.0


def test_block_cg_respects_max_iter():
    h = _spd()
    rhs = torch.randn(2, 12, dtype=torch.float64)
    _, n_iter, res = block_conjugate_gradient(lambda z: z @ h, rhs, rtol=1e-14, max_iter=2)
    assert n_iter == 2 and bool((res > 1e-14).all())


def test_lanczos_finds_top_eigenvalue():
    h = _spd()
    gen = torch.Generator().manual_seed(1)
    exact = float(torch.linalg.eigvalsh(h)[-1])
    assert abs(top_eigenvalue(lambda z: z @ h, 12, n_iter=12, generator=gen) - exact) < 1e-8 * exact
    rough = top_eigenvalue(lambda z: z @ h, 12, n_iter=6, generator=gen)
    assert 0.5 * exact < rough <= exact * (1 + 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_add_gram_sums_batches_of_rows_in_float64(dtype):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(k, 7, generator=gen, dtype=dtype) for k in (5, 1, 9)]
    total, buffer = torch.zeros(7, 7, dtype=torch.float64), None
    for rows in batches:
        buffer = add_gram(total, rows, buffer)
    assert (buffer is None) == (dtype == torch.float64)
    stacked = torch.cat(batches).double()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(symmetrise_upper(total), stacked.T @ stacked, rtol=tol, atol=tol)


def test_add_gram_accepts_strided_rows():
    rows = torch.randn(6, 10, dtype=torch.float64)[:, ::2]
    total = torch.zeros(5, 5, dtype=torch.float64)
    add_gram(total, rows)
    torch.testing.assert_close(symmetrise_upper(total), rows.T @ rows)


def test_symmetrise_upper_over_blocks_and_add_diagonal():
    a = torch.randn(9, 9, dtype=torch.float64)
    expected = a.triu() + a.triu(1).T
    torch.testing.assert_close(symmetrise_upper(a.clone(), block=4), expected)
    d = torch.rand(9, dtype=torch.float64)
    torch.testing.assert_close(add_diagonal(a, d), a + torch.diag(d))
    assert not torch.equal(add_diagonal(a, d), a)  # a new tensor; `a` is untouched


def test_the_cholesky_preconditioner_inverts_its_matrix_and_splits_the_inverse():
    from linearised_laplace.core.linalg import CholeskyPreconditioner, cholesky

    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen)
    h = m @ m.T + torch.eye(6)
    p = CholeskyPreconditioner(cholesky(h))
    eye = torch.eye(6)
    torch.testing.assert_close(p.solve(eye), torch.linalg.inv(h))
    half, half_t = p.half(eye).T, p.half_t(eye).T  # C and Cᵀ as matrices
    torch.testing.assert_close(half @ half.T, torch.linalg.inv(h))
    torch.testing.assert_close(half_t, half.T)
    assert p.half(eye.float()).dtype == torch.float32
