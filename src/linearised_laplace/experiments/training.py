"""Training a network to its MAP estimate: Adam with weight decay, seeded, checkpointed, resumable.

Weight decay ``λ`` on the mean cross-entropy corresponds to a Gaussian prior of precision ``N·λ`` on
the summed loss. Checkpoints are safetensors files (model and optimiser state) written atomically
after every epoch; training again with the same checkpoint path resumes after the last epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core import persistence
from ..core.checks import check_positive_int
from ..core.progress import progress_bar
from ..core.seeds import seeded_generator
from ..network.inputs import logits


@dataclass(frozen=True)
class TrainConfig:
    """MAP training settings.

    Args:
        epochs: Passes over the training set.
        lr: Adam step, decayed to zero by a cosine schedule.
        weight_decay: L2 penalty on the mean loss.
        batch_size: Minibatch size.
        seed: Seeds the initialisation (when the caller builds the model under it) and the order.
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    seed: int = 0


def _optimiser_tensors(optimiser: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    state = optimiser.state_dict()
    tensors = {
        f"optim.{index}.{key}": value
        for index, entries in state["state"].items()
        for key, value in entries.items()
        if isinstance(value, Tensor)
    }
    return tensors, {"param_groups": state["param_groups"]}


def _restore_optimiser(
    optimiser: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimiser.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def train_map(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    config: TrainConfig = TrainConfig(),  # noqa: B008
    *,
    checkpoint: str | Path | None = None,
    progress: bool | None = None,
) -> list[float]:
    """Train ``model`` in place on ``(x, y)`` by cross-entropy; returns the mean loss per epoch.

    Args:
        model: The network (trained in place and left in evaluation mode); its outputs may be a
            ``ModelOutput`` (its ``.logits``; :func:`~linearised_laplace.network.inputs.logits`). Only
            parameters that require gradients change (e.g. a ``peft`` model's adapters).
        data: Inputs ``[N, ...]`` and integer labels ``[N]``.
        config: Settings.
        checkpoint: File to save to after every epoch and to resume from.
        progress: Show a progress bar.
    """
    check_positive_int("epochs", config.epochs)
    x, y = data
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    history: list[float] = []
    fingerprint = {
        "config": asdict(config),
        "model": persistence.model_signature(model.state_dict()),
        "data": persistence.digest({"x": x, "y": y}),
    }
    if checkpoint is not None:
        persistence.check_writable(checkpoint)
        if Path(checkpoint).exists():
            tensors, meta = persistence.read(checkpoint)
            if meta.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{checkpoint} holds a training run of another model, other data or other "
                    "settings; delete it or pass another path."
                )
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            _restore_optimiser(optimiser, tensors, meta)
            schedule.load_state_dict(meta["schedule"])
            history = meta["history"]
    model.train()
    with progress_bar(
        total=config.epochs, initial=len(history), enabled=progress, desc="training"
    ) as bar:
        for epoch in range(len(history), config.epochs):
            order = torch.randperm(len(x), generator=seeded_generator(config.seed, "train", epoch))
            total = 0.0
            for idx in order.split(config.batch_size):
                optimiser.zero_grad()
                loss = nn.functional.cross_entropy(logits(model(x[idx])), y[idx])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(idx)
            schedule.step()
            history.append(total / len(x))
            bar.update()
            bar.set_postfix(loss=f"{history[-1]:.4f}")
            if checkpoint is not None:
                tensors, meta = _optimiser_tensors(optimiser)
                tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
                meta.update(
                    fingerprint=fingerprint, schedule=schedule.state_dict(), history=history
                )
                persistence.write(checkpoint, tensors, meta)
    model.eval()
    return history
