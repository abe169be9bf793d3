"""linearised-laplace: calibrated, joint uncertainty for trained networks via their tangent linear model.

Imported as ``lla`` in the documentation::

    import linearised_laplace as lla

    la = lla.SampledLaplace(model, "classification", prior_precision=1.0, n_samples=64, seed=0)
    la.fit(train_loader)
    probs = la(x_test)
"""

from . import metrics
from .coordinates.coordinates import Coordinates
from .coordinates.g_prior import ScaledFeatures
from .exceptions import ConvergenceError, ConvergenceWarning, DivergenceError, NotFittedError
from .methods.base import Laplace
from .methods.exact import ExactLaplace
from .methods.nystrom import NystromLaplace
from .methods.sampled import SampledLaplace
from .methods.subnetwork import SubnetworkLaplace
from .model.data import Data
from .model.likelihoods import Categorical, Gaussian, Likelihood
from .model.linear_model import LinearGaussianModel
from .model.noise import NoiseSource, PosteriorNoise, draw_posterior_noise
from .model.priors import Prior, make_prior
from .network.features import FeatureOperator, MatrixFeatures
from .network.linearisation import Linearisation
from .network.parameters import ParameterSelection, select_parameters
from .posteriors import DensePosterior, SampledPosterior
from .solvers import CG, SDD, SGD, Cholesky, Objective, SolveInfo, SolveResult
from .solvers.newton import Newton

__all__ = [
    "CG",
    "SDD",
    "SGD",
    "Categorical",
    "Cholesky",
    "Coordinates",
    "ConvergenceError",
    "ConvergenceWarning",
    "Data",
    "DensePosterior",
    "DivergenceError",
    "ExactLaplace",
    "FeatureOperator",
    "Gaussian",
    "Laplace",
    "Likelihood",
    "LinearGaussianModel",
    "Linearisation",
    "MatrixFeatures",
    "Newton",
    "NystromLaplace",
    "ELLA",
    "NoiseSource",
    "NotFittedError",
    "Objective",
    "ParameterSelection",
    "PosteriorNoise",
    "Prior",
    "SampledLaplace",
    "SampledPosterior",
    "ScaledFeatures",
    "SubnetworkLaplace",
    "SolveInfo",
    "SolveResult",
    "draw_posterior_noise",
    "make_prior",
    "metrics",
    "select_parameters",
]

ELLA = NystromLaplace

__version__ = "0.1.0"
