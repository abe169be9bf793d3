"""The classification benchmark's methods, in a report's row order."""

from .peers import PEER_METHODS

CORE_METHODS = ("map", "ensemble", "mc-dropout", "sampled", "exact", "subnetwork", "nystrom")
# Variants of sampled and exact: the last layer only, an isotropic prior instead of the g-prior,
# EM with the MAP's weights as the mean (laplace-torch's marglik fixed point) instead of θ̄, and
# every default of the library (its solvers, EM's samples and steps, the prior rule).
VARIANTS = {
    "-lastlayer": {"parameters": "last_layer"},
    "-isotropic": {"g_prior": False},
    "-mapmean": {"mean": "network"},
    "-default": {"g_prior": False, "mean": "auto", "defaults": True},
}
EM_OPTIONS = ("mean",)  # variant options of EM rather than of the linear model
OUR_METHODS = CORE_METHODS + tuple(
    f"{m}{v}"
    for v in ("-default", "-lastlayer", "-isotropic", "-isotropic-mapmean")
    for m in ("sampled", "exact")
)
ALL_METHODS = OUR_METHODS + PEER_METHODS  # a report's row order
