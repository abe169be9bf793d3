"""What the linearisation needs of a ``torch.nn.Module``: its state, evaluation mode, forward AD."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of ``model``, detached (not copied), in the model's order."""
    state = {n: p.detach() for n, p in model.named_parameters()}
    state.update({n: b.detach() for n, b in model.named_buffers()})
    return state


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in evaluation mode and restore every submodule's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def lacks_forward_ad(err: BaseException) -> bool:
    """Whether ``err``, or an error it was raised from, says forward-mode AD is not implemented.

    Torch's own messages name forward AD ("Trying to use forward AD with
    _scaled_dot_product_flash_attention_for_cpu that does not support it", "You must implement
    the jvp function for custom autograd.Function to use it with forward mode AD"); a model
    that re-raises such an error as its own keeps it as the cause.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err).lower()
        if any(word in text for word in ("forward ad", "forward-mode", "forward mode")):
            return True
        if "jvp" in text and any(word in text for word in ("not implemented", "must implement")):
            return True
        err = err.__cause__ or err.__context__
    return False
