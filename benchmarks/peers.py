"""laplace-torch 0.3 as a benchmark peer: its structures on a given trained network.

Each method returns per-sample log-probabilities ``[S, N, C]`` of its GLM (or, for ELLA, GP)
function samples on the test inputs, so that every library is scored by the same metrics. For the
weight-space structures the samples are ``f(x; θ*) + J(x)(θ_s − θ*)`` for ``θ_s = la.sample()``,
evaluated jointly over the whole test set with this library's JVPs; laplace-torch's own
``functional_samples`` draws each batch's outputs from a dense joint covariance whose memory grows
quickly with the batch (6.8 GB for 200 points of this CNN), and separate batches would lose the
correlations that joint log-likelihoods measure. Each Laplace object gets its own copy of the
network: laplace-torch's backends leave hooks on modules.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.data import DataLoader, TensorDataset

import linearised_laplace as lla

BATCH = 100


def _loader(data) -> DataLoader:
    return DataLoader(TensorDataset(*data), batch_size=BATCH)


def laplace_torch_samples(method: str, net, train, val, test, n_samples: int):
    """Fit laplace-torch's ``method`` (e.g. ``"lt-kron-val"``).

    Returns:
        Log-probability samples ``[S, N, C]`` and, for subnetworks, the chosen flat indices.
    """
    from laplace import ELLA, Laplace
    from laplace.utils import LargestVarianceDiagLaplaceSubnetMask, LargestVarianceSWAGSubnetMask

    _, structure, tuning = method.split("-")
    model = copy.deepcopy(net)
    train_loader, val_loader = _loader(train), _loader(val)
    if structure == "ella":
        la = ELLA(model, "classification", subsample_size=1000, n_eigenvalues=20, seed=0)
        la.fit(train_loader, progress_bar=False)
        la.optimize_prior_precision(
            method="gridsearch", val_loader=val_loader, grid_size=21, pred_type="gp"
        )
        samples = la.functional_samples(test[0], pred_type="gp", n_samples=n_samples)
        return torch.log_softmax(samples, -1), None
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
                copy.deepcopy(net), n_params_subnet=1000, diag_laplace_model=diagonal
            )
        else:
            mask = LargestVarianceSWAGSubnetMask(
                copy.deepcopy(net), n_params_subnet=1000, likelihood="classification"
            )
        indices = mask.select(train_loader)
        la = Laplace(
            model,
            "classification",
            subset_of_weights="subnetwork",
            hessian_structure="full",
            subnetwork_indices=indices,
        )
    elif structure == "lastlayer":
        la = Laplace(
            model, "classification", subset_of_weights="last_layer", hessian_structure="full"
        )
        parameters = "last_layer"
    else:
        la = Laplace(model, "classification", subset_of_weights="all", hessian_structure=structure)
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
    lin = lla.Linearisation(net, parameters)
    draws = la.sample(n_samples) - la.mean
    if draws.shape[1] != lin.n_params:  # subnetwork samples: embed into the full vector
        full = draws.new_zeros(n_samples, lin.n_params)
        full[:, indices] = draws
        draws = full
    return torch.log_softmax(lin.linearised_forward(test[0], draws.detach()), -1), indices
