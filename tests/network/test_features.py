import pytest
import torch

from linearised_laplace import MatrixFeatures


def _matrix(n=6, c=2, d=5, seed=0):
    return torch.randn(n, c, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rows", [[4, 0, 3], [1, 2, 3]])  # scattered, and consecutive (a view)
@pytest.mark.parametrize("layout", ["dense3", "dense2", "coo", "csr"])
def test_matrix_features_products_match_the_matrix(layout, rows):
    phi = _matrix()
    phi[phi.abs() < 0.5] = 0.0  # genuinely sparse
    flat = phi.reshape(12, 5)
    matrix = {
        "dense3": phi,
        "dense2": flat,
        "coo": flat.to_sparse_coo(),
        "csr": flat.to_sparse_csr(),
    }
    feats = MatrixFeatures(matrix[layout], n_outputs=2)
    idx = torch.tensor(rows)
    v, u = torch.randn(3, 5), torch.randn(3, 3, 2)
    torch.testing.assert_close(feats.to_dense(idx), phi[idx])
    f0, jv = feats.jvp(idx, v)
    assert torch.equal(f0, torch.zeros(3, 2))
    torch.testing.assert_close(jv, torch.einsum("bcd,kd->kbc", phi[idx], v))
    torch.testing.assert_close(feats.vjp(idx, u), torch.einsum("bcd,kbc->kd", phi[idx], u))
    torch.testing.assert_close(
        feats.per_example_vjp(idx, u[0]), torch.einsum("bcd,bc->bd", phi[idx], u[0])
    )


def test_offset_is_returned():
    offset = torch.randn(6, 2)
    feats = MatrixFeatures(_matrix(), offset=offset)
    torch.testing.assert_close(feats.forward(torch.tensor([1, 5])), offset[[1, 5]])


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.randn(7, 3), 2), ValueError, "not a multiple of n_outputs = 2"),
        ((torch.randn(2, 3, 4, 5), 1), ValueError, "must be dense"),
        (([[1.0]], 1), TypeError, "must be a Tensor"),
    ],
)
def test_bad_matrices_raise(args, error, match):
    with pytest.raises(error, match=match):
        MatrixFeatures(*args)


def test_bad_offset_and_rows_raise():
    with pytest.raises(ValueError, match=r"`offset` must have shape \[6, 2\]"):
        MatrixFeatures(_matrix(), offset=torch.zeros(6, 3))
    with pytest.raises(IndexError, match=r"Row indices must lie in \[0, 6\)"):
        MatrixFeatures(_matrix()).forward(torch.tensor([6]))
