"""Shared fixtures: deterministic torch, and the real sample photos when ../shared is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test must never reach a model hub

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT.parent / "shared" / "fundus_samples"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed every test so a failure reproduces; keep torch to the CI's 2 cores."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard requirement
        yield
        return
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def fundus_samples_dir() -> Path:
    """The real photos of ../shared/fundus_samples (research use only, never copied here)."""
    if not SAMPLES_DIR.is_dir():
        pytest.skip("../shared/fundus_samples is not beside this checkout")
    return SAMPLES_DIR
