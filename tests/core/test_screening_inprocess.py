"""In-process preparation (workers=0, what the dashboard uses for small batches) runs on the
server's own threads: it must change no process-wide setting and keep each run's state apart."""

from __future__ import annotations

import threading

import cv2
import pytest
import torch

from core.preprocessing import PreprocessSpec
from core.screening import screen
from core.store import Store
from core.synthetic import write_clinic_folder
from tests.helpers import make_tiny_bundle


@pytest.fixture(scope="module")
def two_clinics(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-clinics")
    write_clinic_folder(root / "a", 2, seed=11, size=192)
    write_clinic_folder(root / "b", 2, seed=12, size=192)
    small = make_tiny_bundle(root, "small")  # input 64
    large = make_tiny_bundle(root, "large", seed=1, preprocessing=PreprocessSpec(input_size=96))
    return root, small, large


def _rows(store: Store, run_id: int) -> dict[str, tuple]:
    return {r.file: (r.grade, r.probs, r.quality_level) for r in store.results_for_run(run_id)}


def test_in_process_run_keeps_thread_counts(two_clinics, tmp_path):
    """An in-process run used to set torch and cv2 to one thread for the whole server."""
    root, small, _ = two_clinics
    torch_before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.set_num_threads(2)
        cv2.setNumThreads(3)
        screen(root / "a", [small], Store(tmp_path / "db.sqlite"), workers=0)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 3)
    finally:
        torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv2_before)


@pytest.mark.timeout(300)
def test_two_concurrent_in_process_runs_keep_their_own_rows(two_clinics, tmp_path):
    """Two sessions screening at once in one server, with different preprocessing: each run
    holds exactly its own folder's rows, identical to the same run made alone."""
    root, small, large = two_clinics
    solo = Store(tmp_path / "solo.sqlite")
    want = {name: _rows(solo, screen(root / name, [b], solo, workers=0, batch_size=2))
            for name, b in (("a", small), ("b", large))}
    assert want["a"] and want["b"]

    store = Store(tmp_path / "shared.sqlite")
    b_started = threading.Event()
    got: dict[str, int] = {}
    errors: list[BaseException] = []

    def run(name, bundle, progress):
        try:
            got[name] = screen(root / name, [bundle], store, workers=0, batch_size=2,
                               progress=progress)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # a prepares one photo, then waits until b has started: their preparation interleaves
    wait_for_b = lambda done, *_: b_started.wait(60) if done == 1 else None  # noqa: E731
    threads = [threading.Thread(target=run, args=("a", small, wait_for_b)),
               threading.Thread(target=run, args=("b", large, lambda *_: b_started.set()))]
    threads[0].start()
    threads[1].start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    for name in ("a", "b"):
        files = {p.relative_to(root / name).as_posix() for p in (root / name).rglob("*")
                 if p.is_file()}
        assert {f.file for f in store.files_for_run(got[name])} == files
        assert _rows(store, got[name]) == want[name], name
