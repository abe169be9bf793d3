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


# ---------------------------------------------------------------- inputs as Hugging Face has them
TOKENS, LENGTH = 6, 4


class TokenCore(nn.Module):
    """Mean-pools embedded token ids under a mask, appends dense features, classifies (C = 3)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(TOKENS, 3)
        self.head = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))

    def forward(self, input_ids, attention_mask, extra):
        mask = attention_mask.to(self.embed.weight.dtype)[..., None]
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return self.head(torch.cat([pooled, extra], dim=-1))


class KeywordInputs(nn.Module):
    """``model(**x)`` (or ``model(*x)``) with ``input_ids``, ``attention_mask``, ``extra``."""

    def __init__(self, core: TokenCore, wrap=None):
        super().__init__()
        self.core, self.wrap = core, wrap or (lambda out: out)

    def forward(self, input_ids, attention_mask, extra):
        return self.wrap(self.core(input_ids, attention_mask, extra))


class PackedInputs(nn.Module):
    """The same network on one tensor ``[N, 2L + 2]``: ids, mask and extra side by side."""

    def __init__(self, core: TokenCore):
        super().__init__()
        self.core = core

    def forward(self, x):
        ids, mask, extra = x[:, :LENGTH].long(), x[:, LENGTH : 2 * LENGTH], x[:, 2 * LENGTH :]
        return self.core(ids, mask, extra)


def token_core(seed: int = 0) -> TokenCore:
    torch.manual_seed(seed)
    return TokenCore()


def token_data(n: int = 24, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Dict inputs (integer ids, a padding mask whose first token is always kept) and labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TOKENS, (n, LENGTH), generator=gen)
    mask = (torch.rand(n, LENGTH, generator=gen) < 0.7).to(torch.get_default_dtype())
    mask[:, 0] = 1.0
    extra = torch.randn(n, 2, generator=gen).to(torch.get_default_dtype())
    y = torch.randint(0, 3, (n,), generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "extra": extra}, y


def packed(x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dict inputs of :func:`token_data` as :class:`PackedInputs` takes them."""
    return torch.cat([x["input_ids"].to(x["extra"].dtype), x["attention_mask"], x["extra"]], -1)
