r"""Subnetwork linearised Laplace (Daxberger et al., ICML 2021): an exact posterior over chosen weights.

A full-covariance Gaussian over ``S`` weights (``S`` up to about ``10⁴``), the rest kept at ``θ*``.
The Jacobian columns of the subnetwork are built in batches from per-example Jacobians, never the
full Jacobian; everything else (EM, evidence, predictive, files) is that of ``ExactLaplace``.
"""

from __future__ import annotations

from torch import Tensor

from ..coordinates.ranking import Ranking, check_subnetwork
from ..core.checks import check_positive_int
from ..network.parameters import ParameterSelection
from ..solvers.newton import Newton
from .exact import ExactLaplace


class SubnetworkLaplace(ExactLaplace):
    r"""Linearised Laplace with a full covariance over a subnetwork of ``n_params`` weights.

    Args:
        model, likelihood, mean_solver, **kwargs: As for :class:`~linearised_laplace.ExactLaplace`
            (a ranking strategy needs a single ``prior_precision``).
        subnetwork: ``"swag"`` (default; largest diagonal-SWAG variance), ``"diagonal_laplace"``,
            ``"magnitude"``, ``"random"`` (all rank weights with non-zero curvature and keep
            ``n_params``), ``"last_layer"``, or explicit flat indices (a tensor) into the
            trainable parameters.
        n_params: Subnetwork size for the ranking strategies.
        swag_epochs: Epochs of the SWAG run (``"swag"`` only).

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
        exclude_norm = kwargs.get("exclude_norm", False)
        ranked = check_subnetwork(model, subnetwork, n_params, exclude_norm)
        epochs = check_positive_int("swag_epochs", swag_epochs)
        ranking = Ranking(subnetwork, n_params, epochs, bool(exclude_norm)) if ranked else None
        parameters = "all" if ranked else subnetwork
        super().__init__(
            model,
            likelihood,
            mean_solver=mean_solver,
            coordinates={"ranking": ranking},
            parameters=parameters,
            **kwargs,
        )
