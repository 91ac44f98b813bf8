"""Process pools whose workers never re-run the caller's `__main__`.

spawn and forkserver children import the parent's `__main__` before they run a task. Under
`streamlit run` that module is the page script, so every worker would re-run the dashboard;
after Streamlit's AppTest it is a deleted temporary file, so every worker dies at start and
`multiprocessing.Pool` replaces it forever (CI hung for an hour on exactly this). Our task
functions live in importable modules, so workers here start with a bare `__main__` instead.

Under `python -m pkg.mod` the real `__main__` is kept: the child imports `pkg.mod` as
`__mp_main__` (what multiprocessing always does there, and safe: such a module is importable
and guards its entry point), so the functions and classes it defines still pickle. Swapping it
too broke `python -m core.screening` (PicklingError on `__main__._init_worker`).
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.pool
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import context as mp_context
from typing import Any

_MAIN_SWAP = threading.Lock()


def default_start_method() -> str:
    """forkserver where the platform has it (no fork of a threaded server), else spawn."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


@contextmanager
def bare_main() -> Iterator[None]:
    """While a child starts, a script's `__main__` is swapped for an empty module (no file, no
    spec), so the child runs no script. A `python -m` main is left alone (see module doc)."""
    with _MAIN_SWAP:
        real = sys.modules.get("__main__")
        if _is_module_run(real):
            yield
            return
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if real is not None:
                sys.modules["__main__"] = real


def _is_module_run(main: types.ModuleType | None) -> bool:
    """`python -m pkg.mod`: an importable name, never a page script or AppTest's temp file."""
    name = getattr(getattr(main, "__spec__", None), "name", None)
    return bool(name) and name != "__main__"


class _BareMainStart:
    """Mixin: start the child under `bare_main` (a class, because the process is pickled)."""

    def start(self) -> None:
        with bare_main():
            super().start()  # type: ignore[misc]


class BareMainSpawnProcess(_BareMainStart, mp_context.SpawnProcess):
    """A spawn child that imports no `__main__`."""


_PROCESS_FOR_METHOD: dict[str, type] = {"spawn": BareMainSpawnProcess}
if hasattr(mp_context, "ForkServerProcess"):  # POSIX only

    class BareMainForkServerProcess(_BareMainStart, mp_context.ForkServerProcess):
        """A forkserver child (and the server itself) that import no `__main__`."""

    _PROCESS_FOR_METHOD["forkserver"] = BareMainForkServerProcess


class _BareMainPool(multiprocessing.pool.Pool):
    """A Pool whose workers, first ones and replacements, start under `bare_main`."""

    @staticmethod
    def Process(ctx, *args, **kwds):  # noqa: N802 - the hook Pool calls for every worker
        return _PROCESS_FOR_METHOD.get(ctx.get_start_method(), ctx.Process)(*args, **kwds)


def worker_pool(processes: int, initializer: Callable[..., Any] | None = None,
                initargs: tuple = (), method: str | None = None) -> multiprocessing.pool.Pool:
    """A process pool (use it as a context manager) safe to start from Streamlit or pytest."""
    ctx = mp.get_context(method or default_start_method())
    return _BareMainPool(processes, initializer, initargs, context=ctx)
