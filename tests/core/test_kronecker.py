"""KFAC blocks and their preconditioner against dense Kronecker products."""

import torch

from linearised_laplace.core.kronecker import KroneckerBlock, KroneckerGGN, KroneckerPreconditioner


def _psd(n, seed):
    m = torch.randn(n, n, generator=torch.Generator().manual_seed(seed))
    return m @ m.T / n + 0.1 * torch.eye(n)


def _permutation(out, width, bias):
    """Flat block coordinates (W row-major, then b) of each entry of vec_r([W b])."""
    index = torch.arange(out * width).reshape(out, width)
    if not bias:
        return index.flatten()
    weight = torch.arange(out * (width - 1)).reshape(out, width - 1)
    return torch.cat([weight, out * (width - 1) + torch.arange(out)[:, None]], 1).flatten()


def _dense(ggn):
    """``K`` ``[D, D]`` in the flat coordinates, scaled: ``S K S``."""
    k = torch.zeros(ggn.n_params, ggn.n_params)
    for b in ggn.blocks:
        g = b.g_vectors @ torch.diag(b.g_values) @ b.g_vectors.T
        a = b.a_vectors @ torch.diag(b.a_values) @ b.a_vectors.T
        order = b.start + _permutation(len(b.g_values), len(b.a_values), b.bias)
        k[order[:, None], order[None, :]] = torch.kron(g, a)
    s = torch.ones(ggn.n_params) if ggn.scale is None else ggn.scale
    return s[:, None] * k * s[None, :]


def _ggn(scale=None):
    # a layer [W b] (3 × (4 + 1) = 15), a bias alone (2), a weight alone (2 × 2), 3 uncovered
    blocks = (
        KroneckerBlock.of(0, _psd(3, 0), _psd(5, 1), bias=True),
        KroneckerBlock.of(15, _psd(2, 2)),
        KroneckerBlock.of(17, _psd(2, 3), _psd(2, 4)),
    )
    return KroneckerGGN(blocks, 24, ("norm.weight",), scale)


def test_the_matvec_is_the_kronecker_product_in_the_flat_coordinates():
    for scale in (None, torch.rand(24) + 0.5):
        ggn = _ggn(scale)
        torch.testing.assert_close(ggn.matvec(torch.eye(24)), _dense(ggn))
        assert ggn.covered().tolist() == [True] * 21 + [False] * 3
        torch.testing.assert_close(ggn.scaled(2.0).matvec(torch.eye(24)), 2 * _dense(ggn))


def test_the_preconditioner_inverts_the_damped_blocks_and_the_diagonal_elsewhere():
    scale = torch.rand(24) + 0.5
    ggn = _ggn(scale)
    prior = torch.rand(24) + 0.2
    ggn_diag = torch.rand(24)
    p = KroneckerPreconditioner(ggn, prior, ggn_diag)
    dense = torch.diag(prior + ggn_diag)
    k = _dense(KroneckerGGN(ggn.blocks, 24))
    for b in ggn.blocks:
        s = slice(b.start, b.stop)
        delta = float((prior[s] / scale[s] ** 2).mean())
        block = k[s, s] + delta * torch.eye(b.stop - b.start)
        dense[s, s] = scale[s, None] * block * scale[None, s]
    inverse = torch.linalg.inv(dense)
    eye = torch.eye(24)
    torch.testing.assert_close(p.solve(eye), inverse)
    half, half_t = p.half(eye).T, p.half_t(eye).T
    torch.testing.assert_close(half @ half.T, inverse)
    torch.testing.assert_close(half_t, half.T)


def test_without_a_scale_the_damping_is_the_tensors_prior_and_the_block_exact():
    ggn = _ggn()
    prior = torch.cat([torch.full((15,), 0.7), torch.full((9,), 2.0)])
    p = KroneckerPreconditioner(ggn, prior, torch.zeros(24))
    h = _dense(ggn) + torch.diag(prior)
    torch.testing.assert_close(p.solve(torch.eye(24))[:15, :15], torch.linalg.inv(h[:15, :15]))
