"""The problems of the solver-fidelity benchmark: trained networks and data, small enough for exact.

Each builder returns a :class:`Problem` with the network, its training and test inputs and the
hyperparameters at which sampled and exact posteriors are compared. The networks are float32, as a
user's would be; the exact oracle runs in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Problem:
    """A trained network with its data and the hyperparameters of the comparison."""

    name: str
    model: nn.Module
    likelihood: str
    train: tuple[Tensor, Tensor]
    x_test: Tensor
    prior_precision: float
    sigma_noise: float = 1.0
    batch_size: int = 100


def _fit(net: nn.Module, x: Tensor, y: Tensor, loss, steps: int, lr: float = 1e-2) -> nn.Module:
    optimiser = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        optimiser.zero_grad()
        loss(net(x), y).backward()
        optimiser.step()
    return net.eval()


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return (out - y.reshape(out.shape)).square().mean()


def linear_regression(n: int = 500, d: int = 50) -> Problem:
    """Bayesian linear regression on features with power-law scales (σ = 0.1)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n + 200, d, generator=gen) * torch.arange(1, d + 1) ** -1.0
    y = x @ torch.randn(d, generator=gen) + 0.1 * torch.randn(n + 200, generator=gen)
    torch.manual_seed(0)
    net = nn.Linear(d, 1, bias=False)
    with torch.no_grad():  # the least-squares weights (any θ* works for a linear model)
        net.weight.copy_(torch.linalg.lstsq(x[:n], y[:n, None]).solution.T)
    return Problem(
        f"linear-regression-n{n}", net.eval(), "regression", (x[:n], y[:n]), x[n:], 1.0, 0.1
    )


def sinusoid(n: int = 150) -> Problem:
    """laplace-torch's 1-D example: ``y = sin(x) + 0.3 ε`` on ``[0, 8]``, a 1-50-1 tanh MLP.

    At laplace-torch's marginal-likelihood values for it, ``α = 0.1`` and ``σ = 0.28``.
    """
    gen = torch.Generator().manual_seed(711)
    x = 8 * torch.rand(n, 1, generator=gen)
    y = torch.sin(x) + 0.3 * torch.randn(n, 1, generator=gen)
    torch.manual_seed(711)
    net = _fit(nn.Sequential(nn.Linear(1, 50), nn.Tanh(), nn.Linear(50, 1)), x, y, _mse, 2000)
    x_test = torch.linspace(-5, 13, 200)[:, None]
    return Problem(f"sinusoid-n{n}", net, "regression", (x, y), x_test, 0.1, 0.28, batch_size=50)


def small_noise_mlp(n: int = 256) -> Problem:
    """A 5-16-1 tanh MLP on a smooth 5-D function with noise σ = 0.1, at α = 1."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n + 200, 5, generator=gen)
    y = torch.sin(x @ torch.randn(5, 1, generator=gen)) + 0.1 * torch.randn(
        n + 200, 1, generator=gen
    )
    torch.manual_seed(3)
    net = _fit(
        nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)), x[:n], y[:n], _mse, 2000
    )
    return Problem("small-noise-mlp", net, "regression", (x[:n], y[:n]), x[n:], 1.0, 0.1, 64)


def diabetes() -> Problem:
    """scikit-learn's bundled diabetes regression (442 points, 10 features), a 10-32-1 tanh MLP."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    y = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)[:, None]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:342], perm[342:]
    torch.manual_seed(0)
    net = _fit(
        nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1)), x[train], y[train], _mse, 500
    )
    sigma = float(_mse(net(x[train]), y[train]).detach().sqrt())
    return Problem("diabetes-mlp", net, "regression", (x[train], y[train]), x[test], 1.0, sigma, 64)


def _digits(n_train: int = 1000):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:n_train], perm[n_train : n_train + 300]
    return (x[train], torch.tensor(y)[train]), x[test]


def digits_mlp() -> Problem:
    """A 64-32-10 tanh MLP on 1,000 digits (softmax likelihood), α = 1."""
    (x, y), x_test = _digits()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    net = _fit(net, x, y, nn.functional.cross_entropy, 300)
    return Problem("digits-mlp", net, "classification", (x, y), x_test, 1.0)


def digits_mlp_wide(n_train: int = 1000) -> Problem:
    """A 64-64-64-10 tanh MLP (D = 8,970) on ``n_train`` digits, α = 1.

    Too large for ``auto``'s dense solve, so ``auto`` runs CG: in the primal space at 1,000 points,
    in the dual at 500 (``n·C < D``).
    """
    (x, y), x_test = _digits(n_train)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)
    )
    net = _fit(net, x, y, nn.functional.cross_entropy, 300)
    name = "digits-mlp-wide" if n_train == 1000 else f"digits-mlp-wide-n{n_train}"
    return Problem(name, net, "classification", (x, y), x_test, 1.0)


def digits_cnn() -> Problem:
    """A small CNN (two 3×3 convs, 4 and 8 channels) on 1,000 digits, α = 1."""
    (x, y), x_test = _digits()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4, 10),
    )
    net = _fit(net, x, y, nn.functional.cross_entropy, 300)
    return Problem("digits-cnn", net, "classification", (x, y), x_test, 1.0)


def fashion_cnn(n: int = 2000) -> Problem:
    """The classification benchmark's Fashion-MNIST CNN (width 16, D ≈ 20.5k) on ``n`` images."""
    from linearised_laplace.experiments.datasets import fashion_mnist
    from linearised_laplace.experiments.models import cnn
    from linearised_laplace.experiments.training import TrainConfig, train_map

    data = fashion_mnist(n_train=n, n_val=0)
    torch.manual_seed(0)
    net = cnn(data.image_shape)
    train_map(net, data.train, TrainConfig(epochs=10), progress=False)
    x_test = data.test[0][:500]
    return Problem(f"fashion-cnn-n{n}", net.eval(), "classification", data.train, x_test, 1.0)


PROBLEMS = {
    "linear-regression": linear_regression,
    "sinusoid-n150": lambda: sinusoid(150),
    "sinusoid-n300": lambda: sinusoid(300),
    "sinusoid-n3000": lambda: sinusoid(3000),
    "small-noise-mlp": small_noise_mlp,
    "diabetes-mlp": diabetes,
    "digits-mlp": digits_mlp,
    "digits-cnn": digits_cnn,
    "digits-mlp-wide": digits_mlp_wide,
    "digits-mlp-wide-n500": lambda: digits_mlp_wide(500),
    "fashion-cnn-n2000": fashion_cnn,
}


def mean_variance(la, x: Tensor) -> Tensor:
    """Per-point trace of the functional covariance: ``[N]``."""
    return la.functional_variance(x).diagonal(dim1=-2, dim2=-1).sum(-1).double()


def function_samples(la, x: Tensor) -> Tensor:
    """A fit's own function samples less the network's output, ``f_k(x) − f(x; θ*)``: ``[S, N, C]``.

    What a solver's error is judged on: unlike ``functional_variance``, which a solve that
    factorised ``H`` answers in closed form, they always come from the samples.
    """
    with torch.no_grad():
        return la.predictive_samples(x) - la.model(x)


def sample_variance(functions: Tensor) -> Tensor:
    """Per-point ``mean_k ‖f_k(x) − f(x; θ*)‖²`` of :func:`function_samples`: ``[N]``."""
    return functions.double().square().sum(-1).mean(0)


def monte_carlo_error(functions: Tensor) -> float:
    """Relative standard error of the mean variance estimated from zero-mean function samples.

    ``functions`` ``[S, N, C]``; the estimate is the mean over samples of ``m_s = mean_x ‖f_s(x)‖²``.
    """
    m = functions.double().square().sum(-1).mean(-1)
    return float(m.std() / math.sqrt(len(m)) / m.mean())
