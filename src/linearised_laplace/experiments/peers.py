"""laplace-torch 0.3 as an optional peer: its structures on a given trained network.

Install with ``make peers``. Weight-space structures are turned into joint function samples
``f(x; θ*) + J(x)(θ_s − θ*)`` for ``θ_s = la.sample()``, evaluated with this library's JVPs over any
number of inputs at once; laplace-torch's own ``functional_samples`` draws each batch from a dense
joint covariance whose memory grows with the square of the batch, and separate batches would lose
the correlations that joint log-likelihoods measure. ELLA is a
function-space method and keeps its own ``functional_samples``. Each Laplace object gets its own
copy of the network: laplace-torch's backends leave hooks on modules. The GGN comes from BackPACK:
laplace-torch 0.3's default (curvlinops) builds a full GGN from one GGN-vector product per column
per batch, too slow for even a CNN's last layer. BackPACK
only extends ``nn.Sequential`` stacks, so other networks (the ResNet) use ASDL, which has no KFAC
for BatchNorm: there the KFAC methods are refused with a message naming the structures that run.
Networks with frozen weights (LoRA) use curvlinops, as laplace-torch requires.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ..network.linearisation import Linearisation

BATCH = 100
# ASDL's predictive takes a jacrev over each batch: activations of (C·b) × b images
ASDL_VAL_BATCH = 10
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


def _loader(data, batch_size: int = BATCH) -> DataLoader:
    return DataLoader(TensorDataset(*data), batch_size=batch_size)


def _backend(net: nn.Module, structure: str) -> type:
    """BackPACK's GGN where BackPACK applies (a last layer, an ``nn.Sequential``), else ASDL's.

    A network with frozen weights (LoRA adapters on a frozen model) gets curvlinops' GGN, the only
    backend laplace-torch accepts for one.
    """
    from laplace.curvature import AsdlGGN, BackPackGGN, CurvlinopsGGN

    if not all(p.requires_grad for p in net.parameters()):
        return CurvlinopsGGN
    return BackPackGGN if structure == "lastlayer" or isinstance(net, nn.Sequential) else AsdlGGN


def fit_laplace_torch(method: str, net: nn.Module, train, val, subnetwork_size: int = 1000):
    """laplace-torch's ``method`` (e.g. ``"lt-kron-val"``) fitted on ``train``, its prior tuned.

    ``train`` and ``val`` are ``(x, y)`` pairs; ``-marglik`` tunes the prior precision by
    laplace-torch's marginal likelihood, ``-val`` by its grid search on ``val``. ``net`` is copied.
    """
    from laplace import ELLA, Laplace
    from laplace.utils import LargestVarianceDiagLaplaceSubnetMask, LargestVarianceSWAGSubnetMask

    _, structure, tuning = method.split("-")
    model = copy.deepcopy(net)
    train_loader = _loader(train)
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
            method="gridsearch", val_loader=_loader(val), grid_size=21, pred_type="gp"
        )
        return la
    backend = _backend(net, structure)
    asdl = backend.__name__.startswith("Asdl")
    batchnorm = (isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    if structure == "kron" and asdl and any(batchnorm):
        raise NotImplementedError(
            "laplace-torch's KFAC cannot run this network: BackPACK only extends nn.Sequential "
            "networks, and ASDL has no Kronecker factors for BatchNorm layers. Use lt-diag-* or "
            "lt-lastlayer-* for it."
        )
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
        options = {
            "subset_of_weights": "subnetwork",
            "hessian_structure": "full",
            "subnetwork_indices": mask.select(train_loader),
        }
    elif structure == "lastlayer":
        # laplace-torch's default: a full last-layer posterior recomputes a P² covariance per
        # validation batch, hours for the Fashion-MNIST CNN's 15.7k-weight head on a CPU
        options = {"subset_of_weights": "last_layer", "hessian_structure": "kron"}
    else:
        options = {"subset_of_weights": "all", "hessian_structure": structure}
    la = Laplace(model, "classification", backend=backend, **options)
    la.fit(train_loader, progress_bar=False)
    if tuning == "marglik":
        la.optimize_prior_precision(method="marglik", pred_type="glm")
    else:
        val_batch = ASDL_VAL_BATCH if asdl else BATCH
        la.optimize_prior_precision(
            method="gridsearch",
            val_loader=_loader(val, val_batch),
            pred_type="glm",
            link_approx="probit",
            grid_size=21,
        )
    return la


def function_sampler(la, net: nn.Module, n_samples: int) -> Callable[[Tensor], Tensor]:
    """``x ↦`` ``[S, N, C]`` joint logit samples of a fitted laplace-torch object ``la``.

    Weight-space posteriors give ``f(x; θ*) + J(x)(θ_s − θ*)`` for ``S`` fixed draws ``θ_s``;
    ELLA draws afresh on every call.
    """
    from laplace import ELLA
    from laplace.lllaplace import LLLaplace

    if isinstance(la, ELLA):
        return lambda x: la.functional_samples(x, pred_type="gp", n_samples=n_samples).detach()
    lin = Linearisation(net, "last_layer" if isinstance(la, LLLaplace) else "all")
    draws = (la.sample(n_samples) - la.mean).detach()  # a subnetwork's are full vectors too
    return lambda x: lin.linearised_forward(x, draws)


def subnetwork_indices(la) -> Tensor | None:
    """The flat parameter indices of a laplace-torch subnetwork posterior; ``None`` for others."""
    from laplace import SubnetLaplace

    return la.backend.subnetwork_indices if isinstance(la, SubnetLaplace) else None


def laplace_torch_predictor(
    method: str, net: nn.Module, train, val, n_samples: int, subnetwork_size: int = 1000
) -> tuple[Callable[[Tensor], Tensor], dict]:
    """:func:`fit_laplace_torch`, then its :func:`function_sampler` and its prior precision."""
    la = fit_laplace_torch(method, net, train, val, subnetwork_size)
    precision = torch.as_tensor(la.prior_precision).detach().flatten().tolist()
    return function_sampler(la, net, n_samples), {"prior_precision": precision}
