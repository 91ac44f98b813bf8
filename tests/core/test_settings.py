"""One typed settings object, read from the environment in one place, never written to it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import settings
from core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_parsed_values_and_defaults(tmp_path):
    env = {"DR_MODELS_DIR": str(tmp_path), "DR_MODEL_CACHE_MB": "64", "DR_CPU_INT8": "1",
           "DR_SCREEN_ROOTS": f"{tmp_path}{os.pathsep}{os.pathsep}/srv", "HF_HUB_OFFLINE": "0"}
    s = settings.Settings.from_env(env)
    assert (s.models_dir, s.model_cache_mb, s.cpu_int8, s.hub_downloads) == (tmp_path, 64, True,
                                                                             True)
    assert s.screen_roots == (tmp_path, Path("/srv")) and s.db_path is None
    assert settings.Settings.from_env({}) == settings.Settings()


def test_a_malformed_number_names_its_variable():
    with pytest.raises(ConfigError, match="DR_MODEL_CACHE_MB='lots'"):
        settings.Settings.from_env({"DR_MODEL_CACHE_MB": "lots"})


def test_current_follows_the_environment_and_override_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("DR_MODEL_CACHE_MB", "32")
    first = settings.current()
    assert first.model_cache_mb == 32 and settings.current() is first  # parsed once
    monkeypatch.setenv("DR_MODEL_CACHE_MB", "16")
    assert settings.current().model_cache_mb == 16
    with settings.override(models_dir=tmp_path) as inner:
        assert settings.current() is inner and inner.model_cache_mb == 16
    assert settings.current().models_dir != tmp_path


def test_importing_the_project_leaves_the_environment_alone():
    """The project's own variables (torch and OpenCV set some of theirs when imported)."""
    code = ("import os; from core.settings import ENV_NAMES; "
            "before = {n: os.environ.get(n) for n in ENV_NAMES}; "
            "import core.archs.baseline, core.predict, core.screening, training.trainer.run, "
            "training.trainer.logs, training.trainer.distributed; "
            "after = {n: os.environ.get(n) for n in ENV_NAMES}; assert after == before, after")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "WANDB_MODE")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
