"""Every setting the environment gives this project, parsed in one place into one typed object.

Why: settings used to be read from os.environ in seven modules, one of them at import time,
so a value set after import was silently ignored and a typo in a number failed far from its
cause. Here each variable is read and checked once per environment: `current()` re-parses only
when one of the variables below changed, so a deployment's values are parsed once, and a test
that sets one with monkeypatch is still seen (a parse-once-per-process cache would hand it
the previous test's value). Tests that want a value without touching the environment use
`override(...)`. Nothing here writes to the environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS_DIR = REPO / "models"
DEFAULT_CACHE_MB = 8192

MODELS_DIR_ENV = "DR_MODELS_DIR"
DB_PATH_ENV = "DR_DB_PATH"
SCREEN_ROOTS_ENV = "DR_SCREEN_ROOTS"
CACHE_MB_ENV = "DR_MODEL_CACHE_MB"
CPU_INT8_ENV = "DR_CPU_INT8"
CPU_ONNX_ENV = "DR_CPU_ONNX"
HUB_OFFLINE_ENV = "HF_HUB_OFFLINE"
WANDB_MODE_ENV = "WANDB_MODE"
WORLD_SIZE_ENV = "WORLD_SIZE"  # set by torchrun
LOCAL_RANK_ENV = "LOCAL_RANK"  # set by torchrun
ENV_NAMES = (MODELS_DIR_ENV, DB_PATH_ENV, SCREEN_ROOTS_ENV, CACHE_MB_ENV, CPU_INT8_ENV,
             CPU_ONNX_ENV, HUB_OFFLINE_ENV, WANDB_MODE_ENV, WORLD_SIZE_ENV, LOCAL_RANK_ENV)


@dataclass(frozen=True)
class Settings:
    """The process's configuration (README's table of environment variables)."""

    models_dir: Path = DEFAULT_MODELS_DIR  # folder of model bundles
    db_path: Path | None = None  # screening database; None: core.store's default file
    screen_roots: tuple[Path, ...] = ()  # server folders Batch screening may read
    model_cache_mb: int = DEFAULT_CACHE_MB  # memory bound of the shared model cache
    cpu_int8: bool = False  # ViT tiers grade with dynamic int8 on the CPU
    cpu_onnx: bool = True  # CPU grading on ONNX Runtime where a bundle carries a verified graph
    hub_downloads: bool = False  # timm may download weights (only with HF_HUB_OFFLINE=0)
    wandb_mode: str = "offline"  # W&B logging mode when --wandb is on
    world_size: int = 1  # torchrun processes
    local_rank: int = 0  # this process's GPU under torchrun

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse the variables; a malformed one is a ConfigError naming it."""
        return cls(
            models_dir=Path(env.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR),
            db_path=Path(env[DB_PATH_ENV]) if env.get(DB_PATH_ENV) else None,
            screen_roots=parse_roots(env.get(SCREEN_ROOTS_ENV, "")),
            model_cache_mb=_int(env, CACHE_MB_ENV, DEFAULT_CACHE_MB),
            cpu_int8=env.get(CPU_INT8_ENV, "") == "1",
            cpu_onnx=_flag(env, CPU_ONNX_ENV, True),
            hub_downloads=env.get(HUB_OFFLINE_ENV, "1") == "0",
            wandb_mode=env.get(WANDB_MODE_ENV) or "offline",
            world_size=_int(env, WORLD_SIZE_ENV, 1),
            local_rank=_int(env, LOCAL_RANK_ENV, 0),
        )


def parse_roots(raw: str) -> tuple[Path, ...]:
    """os.pathsep-separated folders, empty entries skipped, ~ expanded."""
    return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip())


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """1/0 (also true/false, on/off, yes/no); unset or empty: the default."""
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "on", "yes"):
        return True
    if raw in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"{name}={env[name]!r} is not 1 or 0; unset it or give e.g. {name}=0")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; unset it or give e.g. "
                          f"{name}={default}") from None


_lock = threading.Lock()
_parsed: tuple[tuple[str | None, ...], Settings] | None = None
_overrides: list[Settings] = []


def current() -> Settings:
    """The settings in force: the innermost `override`, else the parsed environment."""
    global _parsed
    with _lock:
        if _overrides:
            return _overrides[-1]
        key = tuple(os.environ.get(name) for name in ENV_NAMES)
        if _parsed is None or _parsed[0] != key:
            _parsed = (key, Settings.from_env(os.environ))
        return _parsed[1]


@contextlib.contextmanager
def override(**changes: object) -> Iterator[Settings]:
    """Tests: run a block with some settings replaced (process-wide, all threads)."""
    settings = dataclasses.replace(current(), **changes)
    with _lock:
        _overrides.append(settings)
    try:
        yield settings
    finally:
        with _lock:
            _overrides.remove(settings)
