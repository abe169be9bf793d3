r"""Subnetwork linearised Laplace (Daxberger et al., ICML 2021): an exact posterior over chosen weights.

A full-covariance Gaussian over ``S`` weights (``S`` up to about ``10⁴``), the rest kept at ``θ*``.
The Jacobian columns of the subnetwork are built in batches from per-example Jacobians, never the
full Jacobian; everything else (EM, evidence, predictive, files) is that of ``ExactLaplace``.
"""

from __future__ import annotations

from torch import Tensor

from .._checks import check_positive_int
from ..data import Data
from ..g_prior import ggn_diagonal
from ..linear_model import LinearGaussianModel
from ..linearisation import Linearisation
from ..noise import NoiseSource
from ..parameters import ParameterSelection, select_parameters
from ..priors import make_prior
from ..ranking import RANKED, rank_weights, select_top
from ..solvers.newton import Newton
from .base import BaseLaplace
from .exact import ExactLaplace


class SubnetworkLaplace(ExactLaplace):
    r"""Linearised Laplace with a full covariance over a subnetwork of ``n_params`` weights.

    Args:
        model: Trained network.
        likelihood: ``"classification"`` or ``"regression"``.
        subnetwork: ``"swag"`` (default; largest diagonal-SWAG variance), ``"diagonal_laplace"``,
            ``"magnitude"``, ``"random"`` (all rank weights with non-zero curvature and keep
            ``n_params``), ``"last_layer"``, or explicit flat indices (a tensor) into the
            trainable parameters.
        n_params: Subnetwork size for the ranking strategies.
        swag_epochs: Epochs of the SWAG run (``"swag"`` only).
        mean_solver: For the linear model's mean in EM (:class:`~linearised_laplace.solvers.newton.Newton`).
        **kwargs: The shared keywords of :class:`~linearised_laplace.methods.base.BaseLaplace`
            (a ranking strategy needs a single ``prior_precision``).

    The chosen weights are ``linearisation.selection`` once the first ``fit`` has seen the data.
    """

    def __init__(
        self,
        model,
        likelihood="classification",
        *,
        subnetwork: str | Tensor | ParameterSelection = "swag",
        n_params: int | None = None,
        swag_epochs: int = 10,
        mean_solver: Newton | None = None,
        **kwargs,
    ):
        subnetwork = kwargs.pop("parameters", subnetwork)  # how `load` passes a saved selection
        ranked = isinstance(subnetwork, str) and subnetwork in RANKED
        if isinstance(subnetwork, str) and not ranked and subnetwork != "last_layer":
            valid = ", ".join(repr(s) for s in (*RANKED, "last_layer"))
            raise ValueError(
                f"`subnetwork` must be one of {valid} or a tensor of indices, got {subnetwork!r}."
            )
        if ranked:
            total = select_parameters(
                model, "all", exclude_norm=kwargs.get("exclude_norm", False)
            ).n_params
            if n_params is None:
                raise ValueError(
                    f"subnetwork={subnetwork!r} needs `n_params`, the subnetwork size (1 … {total})."
                )
            check_positive_int("n_params", n_params)
            if n_params > total:
                raise ValueError(
                    f"`n_params` = {n_params} exceeds the model's {total} trainable parameters."
                )
        elif n_params is not None:
            raise ValueError("`n_params` applies to ranking strategies only; leave it None here.")
        BaseLaplace.__init__(
            self, model, likelihood, parameters="all" if ranked else subnetwork, **kwargs
        )
        if ranked and not self.prior.is_isotropic:
            raise ValueError(
                "A ranked subnetwork is chosen from the data, so its prior groups are not known "
                "in advance: pass a single `prior_precision`."
            )
        self.strategy = subnetwork if ranked else None
        self.size = n_params if ranked else self.n_params
        self.swag_epochs = check_positive_int("swag_epochs", swag_epochs)
        self._init_exact(self.size, mean_solver)

    def _select(self, data: Data) -> None:
        if self.strategy is None:
            return
        model = LinearGaussianModel(self.linearisation, self.likelihood, self.prior, data)
        diagonal = ggn_diagonal(
            model, NoiseSource(self.seed, stream="subnetwork"), progress=self.progress
        )
        scores = rank_weights(
            self.strategy,
            model,
            diagonal,
            seed=self.seed,
            swag_epochs=self.swag_epochs,
            progress=self.progress,
        )
        indices = select_top(scores, diagonal, self.size)
        lin = self.linearisation
        self.linearisation = Linearisation(
            lin.model,
            indices,
            exclude_norm=self.exclude_norm,
            tangent_batching=lin.tangent_batching,
        )
        selection = self.linearisation.selection
        self.prior = make_prior(self.prior.precision, selection.group_ids, selection.names)
        self.strategy = None
