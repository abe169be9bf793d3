"""The conjugate Gaussian linear model: data, likelihood, prior, its precision and noise."""
