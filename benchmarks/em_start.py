"""Where EM starts, against where it ends: the sketch's fixed point with and without the diagonal.

On the Table 1 CNNs of ``prior_rules.py`` (``D = 20,490``, seed 0), from the dense GGN that
benchmark caches, under the default rule (an isotropic prior, EM's mean ``θ*``):

- ``exact``: MacKay's fixed point ``α = γ(α)/‖θ*‖²`` from the GGN's eigenvalues, where EM ends;
- ``sketch``: the fixed point in a rank-``r`` Nyström sketch of the GGN alone (the former start);
- ``sketch + diagonal``: completed by the diagonal of ``M − M_r`` (the start now), with the exact
  diagonal and with a Hutchinson estimate of ``p`` probes, as the samplers' noise pass makes it;
- ``diagonal``: the fixed point of the diagonal alone.

:func:`~linearised_laplace.tuning.mackay.sketch_start` proves the completed start at or above the
exact fixed point (its ``γ`` bounds the exact one from above) and the sketch's below it. The
library's own start on the same network is in the ``sampled-default`` row's EM history. Run after
``prior_rules.py`` (its GGN, eigenvalues and the g-prior's scale are read from its cache):
``OMP_NUM_THREADS=1 python benchmarks/em_start.py overconfident`` (or ``calibrated``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import prior_rules
import torch
from _report import committed, markdown_table, write
from safetensors.torch import load_file, save_file

import linearised_laplace as lla
from linearised_laplace.core.lowrank import nystrom
from linearised_laplace.posteriors.gamma import eigen_gamma, fixed_point_precision
from linearised_laplace.tuning.mackay import sketch_start

RANKS = (100, 300)  # the samplers' preconditioner rank (100) and three times it
PROBES = (32, 128)  # the noise pass's Hutchinson probes (32), and four times as many


def main(network: str) -> None:
    """Each start's α on ``network``, with the exact γ there, and the page."""
    problem = prior_rules._problem(network)
    tag = problem.tag
    ggn = load_file(f"{tag}-exact-ggn.safetensors")["ggn"]
    inverse = _scale(problem).reciprocal()
    ggn.mul_(inverse[:, None]).mul_(inverse[None, :])  # the network's own weights: isotropic
    eigenvalues = load_file(f"{tag}-isotropic-eigenvalues.safetensors")["eigenvalues"].double()
    theta = _anchor(problem)
    norm = float(theta.square().sum())
    diagonal = ggn.diagonal().clone()
    rows = [_row("exact (eigenvalues)", "", fixed_point_precision(eigenvalues, norm))]
    rows.append(_row("diagonal", "exact", fixed_point_precision(diagonal, norm)))
    for rank in RANKS:
        generator = torch.Generator().manual_seed(rank)
        sketch = nystrom(lambda z: z @ ggn, len(ggn), rank, generator=generator)
        start = sketch_start(sketch.values, sketch.vectors, theta, network_mean=True)
        rows.append(_row(f"sketch, rank {rank}", "", start))
        diagonals = {"exact": diagonal} | {
            f"{p} probes": _hutchinson(ggn, p, seed=rank + p) for p in PROBES
        }
        for name, values in diagonals.items():
            start = sketch_start(sketch.values, sketch.vectors, theta, True, ggn_diag=values)
            rows.append(_row(f"sketch, rank {rank}, + diagonal", name, start))
    exact = rows[0]["α"]
    for row in rows:
        row["γ exact at α"] = float(eigen_gamma(eigenvalues, row["α"]))
        row["log(α / exact)"] = float(torch.tensor(row["α"] / exact).log())
    payload = {"network": network, "D": len(theta), "‖θ*‖²": norm, "rows": rows}
    payload["library"] = _library_start(problem)
    write(f"em_start-{network}", payload, page(payload))


def _row(start: str, diagonal: str, alpha: float) -> dict:
    return {"start": start, "diagonal": diagonal, "α": alpha}


def _anchor(problem) -> torch.Tensor:
    """``θ*`` ``[D]`` in the coordinates of an isotropic prior (the benchmark's weights)."""
    la = lla.SampledLaplace(problem.net, "classification", progress=False, **problem.options)
    return la.coordinates.anchor().double()


def _scale(problem) -> torch.Tensor:
    """The g-prior's scale of ``prior_rules``' exact fit (cached beside its GGN)."""
    path = Path(f"{problem.tag}-g-prior-scale.safetensors")
    if not path.exists():
        la = lla.ExactLaplace(
            problem.net, g_prior=True, ggn_cache=f"{problem.tag}-exact-ggn.safetensors",
            n_samples=2, progress=False, **problem.options,
        ).fit(problem.data.train)  # fmt: skip
        save_file({"scale": la.scale.double().contiguous()}, str(path))
    return load_file(str(path))["scale"]


def _hutchinson(ggn: torch.Tensor, probes: int, seed: int) -> torch.Tensor:
    """``diag(M)`` estimated from ``probes`` Gaussian probes (as the noise pass's ``u``)."""
    z = torch.randn(len(ggn), probes, generator=torch.Generator().manual_seed(seed)).double()
    return ((ggn @ z) * z).mean(1)


def _library_start(problem) -> dict | None:
    """The start recorded by the ``sampled-default`` row's EM, where that row ran."""
    result = prior_rules.method_result(problem.out, "sampled-default")
    if result is None:
        return None
    history = result["em_history"]
    return {"start": history[0]["prior_precision"][0], "end": history[-1]["prior_precision"][0]}


def page(payload: dict) -> str:
    """The markdown page."""
    library = payload.get("library")
    said = (
        f"The library's own start on this network (`sampled-default`, rank 100, 32 probes): "
        f"α {library['start']:.4g}; its EM ended at α {library['end']:.4g}."
        if library
        else "The `sampled-default` row has not run on this network."
    )
    return "\n".join(
        [
            f"# Where EM starts on {prior_rules.NETWORKS[payload['network']]['title']}",
            "",
            f"D = {payload['D']:,}, ‖θ*‖² = {payload['‖θ*‖²']:.4g}, isotropic prior, EM's mean θ*. "
            "Each start is MacKay's fixed point α = γ̂(α)/‖θ*‖² for its estimate γ̂ of "
            "γ = tr M(M + α)⁻¹ from the dense GGN `prior_rules.py` caches; `γ exact at α` is the "
            "exact γ there. The sketch alone misses the γ outside it and starts below the exact "
            "fixed point; completed by the diagonal of M − M_r it starts above it, where the "
            f"samples' solves are better conditioned. {said} Made by `benchmarks/em_start.py`.",
            "",
            markdown_table(
                payload["rows"], ["start", "diagonal", "α", "log(α / exact)", "γ exact at α"]
            ),
        ]
    )


if __name__ == "__main__":
    name = next((a for a in sys.argv[1:] if not a.startswith("--")), "overconfident")
    if "--render" in sys.argv[1:]:  # the page again, with the sampled-default row's start
        saved, made = committed(f"em_start-{name}")
        saved["library"] = _library_start(prior_rules._problem(name))
        write(f"em_start-{name}", saved, page(saved), made=made)
    else:
        main(name)
