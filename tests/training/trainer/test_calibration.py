"""training.trainer.calibration: temperature recovery, identity at T = 1, clamping, ECE improvement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.common.metrics import ece
from training.trainer import calibration as C


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sample(t_true: float, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z / t_true): the fitted T should be t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3.0, size=(n, 5))
    p = _softmax(z / t_true)
    y = (p.cumsum(1) > rng.uniform(size=(n, 1))).argmax(1)
    return z, y


@pytest.mark.parametrize("t_true", [0.5, 2.0, 4.0])
def test_fit_temperature_recovers_known_t(t_true):
    z, y = _sample(t_true)
    t = C.fit_temperature(z, y)
    assert t == pytest.approx(t_true, rel=0.1)
    assert C.nll(z, y, t) <= C.nll(z, y, 1.0)


def test_fit_accepts_torch_tensors():
    z, y = _sample(2.0, n=5000, seed=1)
    t_np = C.fit_temperature(z, y)
    t_torch = C.fit_temperature(torch.tensor(z, requires_grad=True), torch.tensor(y))
    assert t_torch == pytest.approx(t_np, rel=1e-6)


def test_temperature_one_changes_nothing():
    z, _ = _sample(1.0, n=100)
    assert np.allclose(C.apply_temperature(z, 1.0), _softmax(z))
    probs = C.apply_temperature(z, 3.0)
    assert np.allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == z.argmax(1)).all()  # scaling never changes the grade
    assert probs.max(1).mean() < _softmax(z).max(1).mean()  # but it softens confidence


def test_fit_is_clamped():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3.0, size=(500, 5))
    assert C.fit_temperature(z, z.argmax(1)) == pytest.approx(C.T_MIN, rel=1e-3)
    assert C.fit_temperature(np.zeros((50, 5)) + np.eye(5)[np.arange(50) % 5] * 1e-9,
                             np.arange(50) % 5) <= C.T_MAX


def test_scaling_reduces_ece_of_overconfident_model():
    z, y = _sample(3.0, n=10000, seed=3)  # raw z is 3x over-confident
    before = ece(y, C.apply_temperature(z, 1.0))
    after = ece(y, C.apply_temperature(z, C.fit_temperature(z, y)))
    assert after < before / 2


def test_bad_inputs_raise():
    z, y = _sample(1.0, n=10)
    with pytest.raises(ValueError, match="temperature"):
        C.apply_temperature(z, 0.0)
    with pytest.raises(ValueError, match="labels"):
        C.fit_temperature(z, y + 5)
    with pytest.raises(ValueError, match="shape"):
        C.fit_temperature(z[0], y[:1])
