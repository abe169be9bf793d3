"""Errors that the library raises on purpose."""


class NotFittedError(RuntimeError):
    """A method that needs a fitted posterior was called before ``fit``."""


class DivergenceError(RuntimeError):
    """An iterative solver left the region where its iterates are finite and bounded."""


class ConvergenceWarning(UserWarning):
    """An iterative solve stopped above its residual tolerance: its samples are inexact."""


class ConvergenceError(RuntimeError):
    """An iterative solve stopped above its residual tolerance under ``strict=True``."""
