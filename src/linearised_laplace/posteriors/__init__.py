"""Posterior backends: dense (Cholesky) and sampled (sample-then-optimise), one E-step interface."""

from .dense import DensePosterior
from .sampled import SampledPosterior

__all__ = ["DensePosterior", "SampledPosterior"]
