"""A fitted posterior as a file: safetensors with a JSON header (no pickle), and its loading.

The file holds the linearisation point (every parameter and buffer the network used), the samples,
the hyperparameters and the coordinates, so that a load onto the same architecture predicts
identically. Every tensor is checked against its checksum and every header field for its type and
range (:mod:`~linearised_laplace.core.persistence`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.persistence import (
    SIGNATURE,
    Tensors,
    check_fields,
    check_signature,
    largest_difference,
    model_signature,
    read,
    write,
)
from ..network.linearisation import BATCHINGS
from ..network.parameters import ParameterSelection

POSTERIOR_FIELDS = {
    "model": SIGNATURE,
    "likelihood": frozenset({"classification", "regression"}),
    "sigma_noise": float,
    "n_samples": int,
    "seed": int,
    "g_prior": bool,
    "tangent_batching": frozenset(BATCHINGS),
    "selection": SIGNATURE,
    "em_history": list,
}
"""The fields every saved posterior's header has, and what they may hold."""


def check_posterior(meta: dict, class_name: str, path: str | os.PathLike) -> None:
    """Raise unless ``meta`` is the header of a posterior saved by ``class_name``."""
    if meta.get("kind") == "em-checkpoint":
        raise ValueError(
            f"{path} is an EM checkpoint (written by `optimize_prior_precision(checkpoint=...)`),"
            " not a saved posterior. To resume that EM run, pass it as `checkpoint=` to "
            "`optimize_prior_precision` again; to write a loadable posterior, call "
            "`.save(path)` after fitting."
        )
    kind, held = meta.get("kind"), meta.get("class")
    if kind != "posterior" or not isinstance(held, str):
        raise ValueError(
            f"{path} holds {kind!r}, not a saved posterior; pass a file written by `.save(path)`."
        )
    if held != class_name:
        raise ValueError(
            f"{path} holds a {held}, not a {class_name}; load it with lla.{held}.load."
        )
    check_fields(meta, POSTERIOR_FIELDS, path)


def write_posterior(path: str | os.PathLike, lin, tensors: dict, meta: dict) -> None:
    """Write a posterior fitted over the linearisation ``lin``: its point ``θ*``, ``tensors``, ``meta``."""
    snapshot, selection = lin.snapshot(), lin.selection
    state = {f"state.{name}": t for name, t in snapshot.items()}
    shapes = [[n, list(s)] for n, s in zip(selection.names, selection.shapes, strict=True)]
    header = {"kind": "posterior", "model": model_signature(snapshot), "selection": shapes}
    write(path, {**state, **tensors}, {**header, "tangent_batching": lin.tangent_batching, **meta})


def read_posterior(
    path: str | os.PathLike, class_name: str, model, strict: bool
) -> tuple[Tensors, dict, dict[str, Tensor], dict]:
    """A posterior saved by ``class_name`` for ``model``: tensors, header, network state, keywords.

    The keywords are the shared constructor settings. A different architecture raises; different
    weights warn (or raise, with ``strict``).
    """
    tensors, meta = read(path)
    check_posterior(meta, class_name, path)
    current = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    check_signature(meta["model"], model_signature(current), path)
    state = {name: tensors[f"state.{name}"] for name, _ in meta["model"]}
    differs = largest_difference(state, current)
    if differs is not None:
        text = (
            f"The model's weights differ from the linearisation point θ* saved in {path} "
            f"(largest |difference| {differs[1]:.3g}, in {differs[0]!r}); predictions use the "
            "file's weights."
        )
        if strict:
            raise ValueError(
                f"{text} Load onto the network it was fitted on, or pass strict=False."
            )
        warnings.warn(
            f"{text} Load onto the network it was fitted on, or pass strict=True to raise.",
            UserWarning,
            stacklevel=3,
        )
    selection = ParameterSelection(
        tuple(n for n, _ in meta["selection"]),
        tuple(torch.Size(s) for _, s in meta["selection"]),
        tensors.get("selection_indices"),
    )
    keys = ("sigma_noise", "n_samples", "seed", "g_prior", "tangent_batching", "likelihood")
    keywords = {k: meta[k] for k in keys}
    keywords.update(prior_precision=tensors["prior_precision"], parameters=selection)
    return tensors, meta, state, keywords


class SavedPosterior:
    """:meth:`save` and :meth:`load` for :class:`~linearised_laplace.Laplace` (a mixin)."""

    def save(self, path: str | Path) -> None:
        """Save the fitted posterior to ``path`` (safetensors with a JSON header; no pickle).

        The file holds the linearisation point (every parameter and buffer the network used), the
        samples and hyperparameters, so that :meth:`load` with the same architecture predicts
        identically.
        """
        self.check_fitted()
        tensors = {"samples": self.posterior.samples, "prior_precision": self.prior.precision}
        tensors.update(**self.coordinates.tensors(), **self.posterior.tensors())
        meta = {"class": type(self).__name__, "likelihood": self.likelihood.name}
        meta.update(sigma_noise=float(self.sigma_noise), n_samples=self.n_samples, seed=self.seed)
        meta.update(g_prior=self.g_prior, em_history=self.em_history, **self.settings())
        write_posterior(path, self.linearisation, tensors, meta)

    def settings(self) -> dict:
        """The constructor settings a saved file records besides the shared ones."""
        return {**self.coordinates.settings(), **self.posterior.settings()}

    @classmethod
    def settings_from(cls, meta: dict, path: str | Path) -> dict:
        """Constructor keywords from a saved file's :meth:`settings`, checked."""
        return {}

    @classmethod
    def load(
        cls, path: str | Path, model: nn.Module, progress: bool | None = None, strict: bool = False
    ):
        """Load a posterior saved by :meth:`save` onto ``model`` (the same architecture).

        Every tensor is checked against its checksum and for finite values, and every metadata field
        for its type and range; a damaged or edited file raises a ``ValueError`` naming what is
        wrong. Predictions use the file's linearisation point ``θ*``, not ``model``'s weights: if
        those differ, a ``UserWarning`` names the tensor with the largest difference, or, with
        ``strict=True``, a ``ValueError`` is raised.
        """
        tensors, meta, state, shared = read_posterior(path, cls.__name__, model, strict)
        try:
            la = cls(model, progress=progress, **shared, **cls.settings_from(meta, path))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path} holds settings that cannot be built: {err}") from err
        la.linearisation.restore(state)
        la.coordinates.restore(tensors)
        la.em_history = meta["em_history"]
        la.posterior.restore(tensors, la.linearisation.device)
        return la
