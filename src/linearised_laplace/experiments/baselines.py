"""Non-Laplace baselines that produce function samples: deep ensembles and MC dropout.

Both return logits ``[S, N, C]`` (of models that may return a ``ModelOutput``), so that they are scored exactly like the Laplace methods'
``predictive_samples`` (a deep ensemble's members play the role of posterior samples).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..network.inputs import logits
from ..network.modules import eval_mode


def ensemble_samples(models: list[nn.Module], x: Tensor) -> Tensor:
    """Logits of every member: ``[M, N, C]``."""
    with torch.no_grad():
        return torch.stack([logits(m.eval()(x)) for m in models])


def mc_dropout_samples(model: nn.Module, x: Tensor, n_samples: int, seed: int = 0) -> Tensor:
    """Logits under ``n_samples`` random dropout masks (BatchNorm on running statistics): ``[S, N, C]``.

    Runs on a private copy with only the dropout layers in training mode; the random masks come
    from a forked RNG seeded by ``seed``, so global random state is untouched.
    """
    net = copy.deepcopy(model)
    dropouts = [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not dropouts or all(m.p == 0 for m in dropouts):
        raise ValueError(
            "MC dropout needs a model with dropout (p > 0); build it with dropout=0.1."
        )
    samples = []
    with torch.no_grad(), eval_mode(net), torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in dropouts:
            m.training = True
        for _ in range(n_samples):
            samples.append(logits(net(x)))
    return torch.stack(samples)
