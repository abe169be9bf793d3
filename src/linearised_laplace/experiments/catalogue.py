"""The classification benchmark's methods, in a report's row order."""

from .peers import PEER_METHODS

CORE_METHODS = ("map", "ensemble", "mc-dropout", "sampled", "exact", "subnetwork", "nystrom")
# Variants of sampled and exact: the last layer only, an isotropic prior instead of the g-prior,
# and EM with the MAP's weights as the mean (laplace-torch's marglik fixed point) instead of θ̄.
VARIANTS = {
    "-lastlayer": {"parameters": "last_layer"},
    "-isotropic": {"g_prior": False},
    "-mapmean": {"mean": "network"},
}
EM_OPTIONS = ("mean",)  # variant options of EM rather than of the linear model
OUR_METHODS = CORE_METHODS + tuple(
    f"{m}{v}"
    for v in ("-lastlayer", "-isotropic", "-isotropic-mapmean")
    for m in ("sampled", "exact")
)
ALL_METHODS = OUR_METHODS + PEER_METHODS  # a report's row order
