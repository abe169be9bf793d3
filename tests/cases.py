"""Tiny networks and data sets shared by the tests (built in the current default dtype)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(n_in: int = 3, hidden: int = 5, n_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    )


def classification_data(n: int = 40, n_in: int = 3, n_classes: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=gen).to(torch.get_default_dtype())
    y = torch.randint(0, n_classes, (n,), generator=gen)
    return x, y


def regression_data(n: int = 40, n_in: int = 3, n_out: int = 2, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=gen).to(torch.get_default_dtype())
    y = torch.randn(n, n_out, generator=gen).to(torch.get_default_dtype())
    return x, y


def image_data(n: int = 12, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=gen).to(torch.get_default_dtype())
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


def warm_batchnorm(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BatchNorm non-trivial running statistics, then freeze them (eval mode)."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(x)
    return net.eval()


def transformer_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.encoder(x).mean(1))

    return Classifier()
