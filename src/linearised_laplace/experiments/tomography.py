r"""Computed tomography (Antorán et al., 2023, Table 3): uncertainty of a deep-image-prior reconstruction.

A phantom is measured by a parallel-beam ray transform with additive Gaussian noise, reconstructed
by a deep image prior, and every method returns image samples; they are scored by the per-pixel
(marginal) and 10×10-patch Gaussian log-likelihood of the ground truth (Antorán et al., ICLR 2023, §6), with
wall-clock times. Results are cached per method under ``out/methods``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import metrics
from ..solvers import CG
from ..tomography import RayTransform, ellipses, shepp_logan
from ..tomography.dip import DIPConfig, fit_dip
from ..tomography.linearised import LinearisedDIP, exact_linearised_dip
from ..tomography.unet import UNet
from .baselines import mc_dropout_samples
from .provenance import provenance
from .timing import stopwatch

TOMOGRAPHY_METHODS = ("sampled-dual", "sampled-primal", "mc-dropout", "exact")
PATCH = 10
IGNORED = {  # settings a method does not depend on: changing them keeps its cached result
    "exact": ("n_samples", "em_samples", "cg_iterations", "preconditioner_rank"),
    "sampled": ("exact_samples",),
    "mc": ("exact_samples", "em_steps", "em_samples", "cg_iterations", "preconditioner_rank"),
}


@dataclass(frozen=True)
class TomographySettings:
    """What a tomography benchmark runs.

    Attributes:
        angles: Projection angles (60 → 7,680 measurements, 120 → 15,360 at size 128).
        size: Image side.
        image: ``"shepp-logan"`` or ``"ellipses"``.
        noise: Noise standard deviation relative to the mean absolute measurement.
        depth: U-Net scales.
        width: U-Net channels.
        dip_iterations: Adam steps of the DIP fit.
        n_samples: Image samples of the sampled methods (and MC dropout).
        exact_samples: Exact samples of the exact baseline.
        em_steps: EM steps.
        em_samples: Samples per E-step.
        cg_iterations: CG iterations at most per solve (relative tolerance 10⁻³).
        preconditioner_rank: Rank of the dual preconditioner.
        methods: Methods to run.
        out: Output folder.
        seed: Seeds the noise, the network and the samples.
        device: ``"cpu"``, ``"cuda"``, or ``None`` for the GPU where there is one.
    """

    angles: int = 60
    size: int = 128
    image: str = "shepp-logan"
    noise: float = 0.05
    depth: int = 5
    width: int = 32
    dip_iterations: int = 1500
    n_samples: int = 128
    exact_samples: int = 512
    em_steps: int = 3
    em_samples: int = 8
    cg_iterations: int = 200
    preconditioner_rank: int = 50
    methods: tuple[str, ...] = TOMOGRAPHY_METHODS
    out: str = "lla-output/tomography"
    seed: int = 0
    device: str | None = None

    def __post_init__(self):
        if self.device is None:
            object.__setattr__(self, "device", "cuda" if torch.cuda.is_available() else "cpu")
        unknown = [m for m in self.methods if m not in TOMOGRAPHY_METHODS]
        if unknown:
            raise ValueError(
                f"Unknown method(s) {', '.join(unknown)}; choose from {', '.join(TOMOGRAPHY_METHODS)}."
            )
        if self.image not in ("shepp-logan", "ellipses"):
            raise ValueError(f"`image` must be 'shepp-logan' or 'ellipses', got {self.image!r}.")
        if self.size % 2 ** (self.depth - 1):
            raise ValueError(
                f"The image side {self.size} must be divisible by 2^(depth−1) = {2 ** (self.depth - 1)} "
                "for the U-Net; lower `depth` or change `size`."
            )

    @staticmethod
    def smoke_test(out: str) -> TomographySettings:
        """Seconds-sized settings for tests."""
        return TomographySettings(
            angles=8, size=16, depth=3, width=4, dip_iterations=30, n_samples=4, exact_samples=16,
            em_steps=1, em_samples=2, cg_iterations=40, preconditioner_rank=8, out=out,
        )  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """Ground truth (on the CPU), measurements and the operator (on the settings' device)."""

    truth: Tensor
    measurements: Tensor
    sigma: float
    operator: RayTransform


def make_problem(s: TomographySettings) -> Problem:
    """The phantom, its noisy sinogram and the noise level ``σ``."""
    truth = shepp_logan(s.size) if s.image == "shepp-logan" else ellipses(s.size, seed=s.seed)
    operator = RayTransform(s.size, s.angles, device=s.device)
    clean = operator(truth.to(s.device))
    sigma = s.noise * float(clean.abs().mean())
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(s.seed))
    return Problem(truth, clean + sigma * noise.to(s.device), sigma, operator)


def dip_network(
    s: TomographySettings, problem: Problem, dropout: float = 0.0, progress: bool | None = None
) -> tuple[UNet, Tensor, float]:
    """The fitted DIP U-Net (cached), its input and the fit's wall time."""
    folder = Path(s.out) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"dip-{s.image}-{s.size}-a{s.angles}-n{s.noise}-d{s.depth}w{s.width}-i{s.dip_iterations}-p{dropout}-s{s.seed}"
    torch.manual_seed(s.seed)
    net = UNet(depth=s.depth, width=s.width, dropout=dropout).to(problem.truth.dtype)
    net = net.to(problem.measurements.device)
    path = folder / f"{tag}.safetensors"
    z = problem.operator.fbp(problem.measurements[None])[None].detach()
    if path.exists():
        net.load_state_dict(load_file(str(path), device=str(problem.measurements.device)))
        return net.eval(), z, json.loads((folder / f"{tag}.json").read_text())["seconds"]
    with stopwatch() as clock:
        fit_dip(
            net,
            problem.measurements,
            problem.operator,
            DIPConfig(s.dip_iterations, seed=s.seed),
            progress,
        )
    seconds = clock.timing.wall_median
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(path))
    (folder / f"{tag}.json").write_text(json.dumps({"seconds": seconds}))
    return net.eval(), z, seconds


def run_method(
    method: str, s: TomographySettings, problem: Problem, progress: bool | None = None
) -> dict:
    """Image samples of one method around its mean, with the DIP fit's and the method's own time."""
    dropout = 0.05 if method == "mc-dropout" else 0.0
    net, z, dip_seconds = dip_network(s, problem, dropout, progress)
    sync = (lambda: torch.cuda.synchronize(z.device)) if z.device.type == "cuda" else None
    with stopwatch(sync) as clock:  # once: a method's run is too long to repeat
        result = _image_samples(method, s, problem, net, z, progress)
    return {
        **result,
        "dip_seconds": dip_seconds,
        "device": str(z.device),
        "seconds": clock.timing.wall_median,
        "CPU seconds": clock.timing.cpu_median,
    }


def _image_samples(method: str, s: TomographySettings, problem: Problem, net, z, progress) -> dict:
    """``mean`` and ``deviations`` (and EM's history) of one method's image samples."""
    y = problem.measurements.reshape(1, -1)
    if method == "mc-dropout":
        images = mc_dropout_samples(net, z, s.n_samples, s.seed)[:, 0, 0]
        mean = images.mean(0)
        return {"mean": mean.cpu(), "deviations": (images - mean).cpu()}
    with torch.no_grad():
        mean = net(z)[0, 0].cpu()
    kw = {"n_samples": s.n_samples, "seed": s.seed, "progress": progress}
    if method == "exact":
        scaler = LinearisedDIP(net, problem.operator, sigma_noise=problem.sigma, **kw)
        scale = scaler.g_prior_scale((z, y))  # as the sampled method computes it
        exact = exact_linearised_dip(
            net, problem.operator, z, y, problem.sigma, scale,
            max_iter=s.em_steps, n_samples=s.exact_samples, seed=s.seed, progress=progress,
        )  # fmt: skip
        deviations, history = exact.samples, exact.history
    else:
        solver = CG(rtol=1e-3, max_iter=s.cg_iterations, preconditioner_rank=s.preconditioner_rank)
        space = "dual" if method == "sampled-dual" else "primal"
        la = LinearisedDIP(
            net, problem.operator, sigma_noise=problem.sigma, space=space, solver=solver, **kw
        )
        history = la.optimize_prior_precision(
            (z, y), max_iter=s.em_steps, n_em_samples=s.em_samples
        )
        deviations = la.image_samples(z).detach()
    return {"mean": mean, "deviations": deviations.cpu(), "em_history": history}


def score(result: dict, truth: Tensor) -> dict:
    """Marginal and 10×10-patch log-likelihoods, PSNR and calibration bins of a result."""
    deviations, mean = result["deviations"].double(), result["mean"].double()
    std = deviations.square().mean(0).sqrt()
    error = (truth.double() - mean).abs()
    edges = torch.quantile(std.flatten(), torch.linspace(0, 1, 11, dtype=torch.float64))
    bins = torch.bucketize(std.flatten(), edges[1:-1])
    calibration = [
        [
            float(std.flatten()[bins == b].mean()),
            float(error.flatten()[bins == b].square().mean().sqrt()),
        ]
        for b in range(10)
        if (bins == b).any()
    ]
    mse = float((truth.double() - mean).square().mean())
    patch = min(PATCH, truth.shape[-1])
    return {
        "marginal LL": metrics.patch_log_likelihood(deviations, mean, truth, 1),
        "patch LL (10×10)": metrics.patch_log_likelihood(
            deviations, mean, truth, patch, shrink=True
        ),
        "patch LL (10×10, unshrunk)": metrics.patch_log_likelihood(deviations, mean, truth, patch),
        "PSNR": 10 * math.log10(float(truth.max()) ** 2 / mse),
        "wall-clock [min]": result["seconds"] / 60,
        **({"CPU [min]": result["CPU seconds"] / 60} if "CPU seconds" in result else {}),
        "DIP fit [min]": result["dip_seconds"] / 60,
        "calibration (std, RMSE)": calibration,
        "prior_precision": result["em_history"][-1]["prior_precision"][0]
        if "em_history" in result
        else None,
    }


def run(s: TomographySettings, progress: bool | None = None) -> dict:
    """Run every method (cached), write ``results.md``, ``results.json`` and the figures.

    Each method's image samples are kept in ``out/checkpoints/`` (not committed) and its timing in
    ``out/methods/``, so a rerun rescores without recomputing.
    """
    out = Path(s.out)
    (out / "methods").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    problem = make_problem(s)
    settings = json.loads(
        json.dumps({k: v for k, v in asdict(s).items() if k not in ("methods", "out", "device")})
    )
    rows, images = [], {}
    for method in s.methods:
        cache, tensors = (
            out / "methods" / f"{method}.json",
            out / "checkpoints" / f"{method}.safetensors",
        )
        meta = json.loads(cache.read_text()) if cache.exists() else None
        key = {k: v for k, v in settings.items() if k not in IGNORED[method.split("-")[0]]}
        if meta and meta.get("settings") == key and tensors.exists():
            result = {**meta, **load_file(str(tensors))}
        else:
            try:
                result = run_method(method, s, problem, progress)
            except (MemoryError, RuntimeError) as err:
                rows.append(
                    {"method": method, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
                )
                continue
            save_file({k: result[k].contiguous() for k in ("mean", "deviations")}, str(tensors))
            meta = {k: v for k, v in result.items() if k not in ("mean", "deviations")}
            cache.write_text(json.dumps({"method": method, **meta, "settings": key}, indent=1))
        rows.append({"method": method, **score(result, problem.truth)})
        if method == "exact" and s.n_samples < s.exact_samples:  # the same K as the samplers
            same_k = {**result, "deviations": result["deviations"][: s.n_samples]}
            rows.append({"method": f"exact (K = {s.n_samples})", **score(same_k, problem.truth)})
        images[method] = {
            "mean": result["mean"],
            "std": result["deviations"].double().square().mean(0).sqrt(),
        }
    report = {
        "settings": settings,
        "measurements": problem.measurements.numel(),
        "sigma": problem.sigma,
        "device": s.device,
        "results": rows,
        "provenance": provenance(),
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    from .tomography_report import write_report

    write_report(report, problem, images, out)
    return report
