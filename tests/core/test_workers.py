"""Worker pools must not depend on the caller's __main__ (Streamlit's page script, or the
deleted temporary script that Streamlit's AppTest leaves behind)."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import types

import pytest

from core.workers import _BareMainPool, worker_pool


@pytest.fixture
def main_script(tmp_path, monkeypatch):
    """Make __main__ a script that leaves a marker file whenever it is run."""
    marker = tmp_path / "main-was-run"
    script = tmp_path / "page.py"
    script.write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    return script, marker


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_start_when_main_is_a_deleted_file(main_script, method):
    script, _ = main_script
    script.unlink()  # what AppTest.from_function leaves behind: Pool used to respawn forever
    with worker_pool(2, method=method) as pool:
        pids = set(pool.starmap(os.getpid, [()] * 8))
    assert pids and os.getpid() not in pids


@pytest.mark.timeout(120)
def test_workers_do_not_run_the_page_script(main_script):
    _, marker = main_script
    with worker_pool(2, method="spawn") as pool:
        assert len(pool.map(abs, range(-4, 4))) == 8
    assert not marker.exists(), "a worker re-ran the caller's __main__"
    assert sys.modules["__main__"].__file__ == str(main_script[0])  # restored


@pytest.mark.timeout(120)
def test_replacement_workers_start_without_the_page_script(main_script):
    script, marker = main_script
    script.unlink()
    # one task per worker: every later task runs in a worker the pool's own thread started
    with _BareMainPool(1, maxtasksperchild=1, context=mp.get_context("spawn")) as pool:
        pids = {pool.apply_async(os.getpid).get(timeout=60) for _ in range(3)}
    assert len(pids) == 3 and not marker.exists()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_pool_works_under_python_dash_m(method):
    """`python -m core.screening` crashed (PicklingError on __main__._init_worker) with the
    default workers: a bare `__main__` hid the functions and classes the module defines."""
    import subprocess
    from pathlib import Path

    if method not in mp.get_all_start_methods():
        pytest.skip(f"{method} is not available on this platform")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.core._pool_main", method], cwd=root,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"ok {method}" in proc.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_pool_works_from_a_plain_import(method):
    """The library use: task functions in an importable module, any start method."""
    from tests.core import _pool_main

    if method not in mp.get_all_start_methods():
        pytest.skip(f"{method} is not available on this platform")
    assert _pool_main.main(method) == 0
