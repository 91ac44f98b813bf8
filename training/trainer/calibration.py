"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits.

Deep classifiers are typically over-confident; dividing the logits by T > 1 softens them without
changing the argmax, so grades stay the same while probabilities (and hence p_referable, the
operating threshold and ECE) become trustworthy. The fitted T is stored in the bundle manifest.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

T_MIN, T_MAX = 0.05, 20.0


def _as_logits(logits: Any) -> np.ndarray:
    if hasattr(logits, "detach"):  # torch tensor: leave the autograd graph and the device
        logits = logits.detach().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"logits must have shape (N, C) with N > 0, got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN/inf; check the model outputs before calibrating")
    return z


def nll(logits: Any, y_true: Any, temperature: float) -> float:
    """Mean negative log-likelihood of y_true under softmax(logits / T)."""
    z = _as_logits(logits)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if y.shape[0] != z.shape[0] or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"y_true must hold {z.shape[0]} labels in 0..{z.shape[1] - 1}")
    return float(-log_softmax(z / temperature, axis=1)[np.arange(y.size), y].mean())


def fit_temperature(logits: Any, y_true: Any) -> float:
    """T minimising validation NLL, searched on log T within [0.05, 20].

    NLL is convex in 1/T, hence unimodal in log T, so a bounded scalar search is exact and
    deterministic (no learning rate or iteration count to tune, unlike LBFGS on a tensor).
    """
    z = _as_logits(logits)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    nll(z, y, 1.0)  # validates labels once with a clear message
    res = minimize_scalar(lambda log_t: nll(z, y, math.exp(log_t)), method="bounded",
                          bounds=(math.log(T_MIN), math.log(T_MAX)),
                          options={"xatol": 1e-6})
    return float(min(max(math.exp(res.x), T_MIN), T_MAX))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """softmax(logits / T) as float64 probabilities; T = 1 is plain softmax."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use the bundle's fitted T")
    return softmax(_as_logits(logits) / float(temperature), axis=1)
