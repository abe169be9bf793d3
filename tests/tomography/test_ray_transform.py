import numpy as np
import pytest
import torch

from linearised_laplace.tomography import RayTransform, ellipses, shepp_logan


def test_adjoint_is_the_exact_transpose():
    op = RayTransform(24, 10, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 24, 24, generator=gen), torch.randn(3, 10, 24, generator=gen)
    lhs, rhs = (op(x) * y).sum(), (x * op.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(lhs.abs())


def test_gradient_of_the_transform_is_its_adjoint():
    op = RayTransform(16, 6, dtype=torch.float64)
    x = torch.randn(2, 16, 16, requires_grad=True)
    y = torch.randn(2, 6, 16)
    (op(x) * y).sum().backward()
    torch.testing.assert_close(x.grad, op.adjoint(y))


def test_agrees_with_scikit_image_radon_on_the_phantom():
    from skimage.transform import radon

    image = shepp_logan(64).double()
    op = RayTransform(64, 30, dtype=torch.float64)
    ours = op(image).numpy()
    ref = radon(image.numpy(), theta=op.angles, circle=True).T
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.01


def test_filtered_back_projection_reconstructs_the_phantom():
    image = shepp_logan(64)
    op = RayTransform(64, 90)
    fbp = op.fbp(op(image)[None])[0]
    assert float((fbp - image).norm() / image.norm()) < 0.2


def test_phantoms_are_seeded_and_normalised():
    a, b = ellipses(32, seed=1), ellipses(32, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, ellipses(32, seed=2))
    assert float(a.max()) == 1.0 and float(a.min()) >= 0.0
    assert shepp_logan(32).shape == (32, 32)


def test_bad_shapes_say_what_was_expected():
    op = RayTransform(16, 4)
    with pytest.raises(ValueError, match="square"):
        op(torch.zeros(16, 8))
    with pytest.raises(ValueError, match=r"build RayTransform\(32"):
        op(torch.zeros(32, 32))
    with pytest.raises(ValueError, match=r"\[..., 4, 16\]"):
        op.adjoint(torch.zeros(5, 16))
    with pytest.raises(ValueError, match="at least one angle"):
        RayTransform(16, 0)
