"""Coordinates of the posterior: g-prior scaling, subnetwork ranking and the Nyström basis."""

from .coordinates import Coordinates

__all__ = ["Coordinates"]
