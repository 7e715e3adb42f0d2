"""MR image artefacts shared by the phantom and label-map synthesis: bias field and Rician noise."""
from __future__ import annotations

import numpy as np

# Distance in mm that normalises world coordinates for the bias polynomial, so that the
# coefficients mean "log-gain change over 10 cm".
BIAS_LENGTH_SCALE_MM = 100.0
BIAS_TERMS = 9


def sample_bias_coefficients(rng: np.random.Generator, strength: float) -> np.ndarray:
    """Draw the coefficients of a smooth log-bias polynomial (linear, square and cross terms)."""
    return rng.normal(0.0, strength, size=BIAS_TERMS)


def bias_field(world_points: np.ndarray, center, coefficients: np.ndarray) -> np.ndarray:
    """Return the multiplicative bias exp(polynomial) at (..., 3) world points."""
    u = (np.asarray(world_points) - np.asarray(center)) / BIAS_LENGTH_SCALE_MM
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    log_gain = sum(c * term for c, term in zip(coefficients, terms))
    return np.exp(log_gain)


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Return the magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma``."""
    real = signal + rng.normal(0.0, sigma, size=signal.shape)
    imaginary = rng.normal(0.0, sigma, size=signal.shape)
    return np.sqrt(real * real + imaginary * imaginary)
