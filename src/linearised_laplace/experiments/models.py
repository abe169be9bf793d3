"""Networks for the classification experiments: an MLP, a small CNN and a CIFAR-style ResNet.

Defined here because nothing may be downloaded and torchvision does not import with this torch.
Each takes ``dropout`` (before the classifier) so that the same architecture serves MC dropout.
"""

from __future__ import annotations

from torch import Tensor, nn


def mlp(
    image_shape: tuple[int, ...],
    classes: int = 10,
    hidden: int = 256,
    depth: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """``Flatten → [Linear → ReLU] × depth → (Dropout) → Linear``."""
    n_in = 1
    for size in image_shape:
        n_in *= size
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.ReLU()]
    layers += [nn.Dropout(dropout), nn.Linear(hidden, classes)]
    return nn.Sequential(*layers)


def cnn(
    image_shape: tuple[int, ...], classes: int = 10, width: int = 16, dropout: float = 0.0
) -> nn.Module:
    """Two ``3×3`` conv layers (``width``, ``2·width`` channels) with max-pooling, then a linear head."""
    channels, height, width_px = image_shape
    pooled = (height // 4) * (width_px // 4)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(2 * width * pooled, classes),
    )


class BasicBlock(nn.Module):
    """Two ``3×3`` convolutions with BatchNorm and an identity (or ``1×1``-conv) shortcut."""

    def __init__(self, n_in: int, n_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False), nn.BatchNorm2d(n_out)
            )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al., 2016): depth ``6n + 2``, stages of width ``w, 2w, 4w``.

    Args:
        image_shape: ``(channels, height, width)``.
        classes: Outputs.
        depth: ``8`` (``n = 1``), ``14``, ``20`` (``n = 3``), ...
        width: Channels of the first stage.
        dropout: Dropout before the classifier.
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        classes: int = 10,
        depth: int = 8,
        width: int = 16,
        dropout: float = 0.0,
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n + 2 (8, 14, 20, ...), got {depth}.")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(image_shape[0], width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        stages, n_in = [], width
        for stage, n_out in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks):
                stages.append(BasicBlock(n_in, n_out, 2 if stage > 0 and block == 0 else 1))
                n_in = n_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(n_in, classes)
        )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.head(self.stages(self.stem(x)))


ARCHITECTURES = ("mlp", "cnn", "resnet")


def build(
    name: str, image_shape: tuple[int, ...], classes: int = 10, dropout: float = 0.0, **kwargs
) -> nn.Module:
    """Build ``"mlp"``, ``"cnn"`` or ``"resnet"`` (extra keywords go to its constructor)."""
    if name == "mlp":
        return mlp(image_shape, classes, dropout=dropout, **kwargs)
    if name == "cnn":
        return cnn(image_shape, classes, dropout=dropout, **kwargs)
    if name == "resnet":
        return ResNet(image_shape, classes, dropout=dropout, **kwargs)
    raise ValueError(f"Unknown model {name!r}; choose one of {ARCHITECTURES}.")
