"""Tiny bundles shared by the page tests (built once per session)."""

from __future__ import annotations

import pytest

from tests.dashboard.pages_support import build_models


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"))
