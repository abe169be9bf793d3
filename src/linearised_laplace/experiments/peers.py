"""laplace-torch 0.3 as an optional peer: its structures on a given trained network.

Install with ``make peers``. Weight-space structures are turned into joint function samples
``f(x; θ*) + J(x)(θ_s − θ*)`` for ``θ_s = la.sample()``, evaluated with this library's JVPs over any
number of inputs at once; laplace-torch's own ``functional_samples`` draws each batch from a dense
joint covariance whose memory grows quickly with the batch (6.8 GB for 200 points of a small CNN),
and separate batches would lose the correlations that joint log-likelihoods measure. ELLA is a
function-space method and keeps its own ``functional_samples``. Each Laplace object gets its own
copy of the network: laplace-torch's backends leave hooks on modules. The GGN comes from BackPACK:
laplace-torch 0.3's default (curvlinops) builds a full GGN from one GGN-vector product per column
per batch, which took more than 15 minutes for the last layer of the Fashion-MNIST CNN. BackPACK
only extends ``nn.Sequential`` stacks, so other networks (the ResNet) use ASDL, which has no KFAC
for BatchNorm: there the KFAC methods fail and their error is reported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ..linearisation import Linearisation

BATCH = 100
PEER_METHODS = (
    "lt-full-marglik",
    "lt-kron-marglik",
    "lt-kron-val",
    "lt-diag-marglik",
    "lt-diag-val",
    "lt-lastlayer-marglik",
    "lt-lastlayer-val",
    "lt-subnet-marglik",
    "lt-subnetdiag-marglik",
    "lt-ella-val",
)


def available() -> bool:
    """Whether laplace-torch imports."""
    try:
        import laplace  # noqa: F401
    except ImportError:
        return False
    return True


def _loader(data) -> DataLoader:
    return DataLoader(TensorDataset(*data), batch_size=BATCH)


def _backend(net: nn.Module, structure: str) -> type:
    """BackPACK's GGN where BackPACK applies (a last layer, an ``nn.Sequential``), else ASDL's."""
    from laplace.curvature import AsdlGGN, BackPackGGN

    return BackPackGGN if structure == "lastlayer" or isinstance(net, nn.Sequential) else AsdlGGN


def laplace_torch_predictor(
    method: str, net: nn.Module, train, val, n_samples: int, subnetwork_size: int = 1000
) -> tuple[Callable[[Tensor], Tensor], Tensor | None]:
    """Fit laplace-torch's ``method`` (e.g. ``"lt-kron-val"``) on ``train``, tuning on ``val``.

    Returns:
        ``x ↦`` logit samples ``[S, N, C]`` (the same posterior draws for every call, except ELLA),
        and, for subnetworks, the chosen flat parameter indices.
    """
    from laplace import ELLA, Laplace
    from laplace.utils import LargestVarianceDiagLaplaceSubnetMask, LargestVarianceSWAGSubnetMask

    _, structure, tuning = method.split("-")
    model = copy.deepcopy(net)
    train_loader, val_loader = _loader(train), _loader(val)
    if structure == "ella":
        la = ELLA(
            model,
            "classification",
            subsample_size=min(1000, len(train[0])),
            n_eigenvalues=20,
            seed=0,
        )
        la.fit(train_loader, progress_bar=False)
        la.optimize_prior_precision(
            method="gridsearch", val_loader=val_loader, grid_size=21, pred_type="gp"
        )
        return (
            lambda x: la.functional_samples(x, pred_type="gp", n_samples=n_samples).detach()
        ), None
    indices, parameters = None, "all"
    if structure.startswith("subnet"):
        if structure == "subnetdiag":
            diagonal = Laplace(
                copy.deepcopy(net),
                "classification",
                subset_of_weights="all",
                hessian_structure="diag",
            )
            mask = LargestVarianceDiagLaplaceSubnetMask(
                copy.deepcopy(net), n_params_subnet=subnetwork_size, diag_laplace_model=diagonal
            )
        else:
            mask = LargestVarianceSWAGSubnetMask(
                copy.deepcopy(net), n_params_subnet=subnetwork_size, likelihood="classification"
            )
        indices = mask.select(train_loader)
        la = Laplace(
            model,
            "classification",
            subset_of_weights="subnetwork",
            hessian_structure="full",
            subnetwork_indices=indices,
            backend=_backend(net, structure),
        )
    elif structure == "lastlayer":
        la = Laplace(
            model,
            "classification",
            subset_of_weights="last_layer",
            hessian_structure="full",
            backend=_backend(net, structure),
        )
        parameters = "last_layer"
    else:
        la = Laplace(
            model,
            "classification",
            subset_of_weights="all",
            hessian_structure=structure,
            backend=_backend(net, structure),
        )
    la.fit(train_loader, progress_bar=False)
    if tuning == "marglik":
        la.optimize_prior_precision(method="marglik", pred_type="glm")
    else:
        la.optimize_prior_precision(
            method="gridsearch",
            val_loader=val_loader,
            pred_type="glm",
            link_approx="probit",
            grid_size=21,
        )
    lin = Linearisation(net, parameters)
    draws = (la.sample(n_samples) - la.mean).detach()
    if draws.shape[1] != lin.n_params:  # subnetwork samples: embed into the full vector
        full = draws.new_zeros(n_samples, lin.n_params)
        full[:, indices] = draws
        draws = full
    return (lambda x: lin.linearised_forward(x, draws)), indices
