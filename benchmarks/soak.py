"""Soak: does a dashboard process stay flat (memory, files, threads, latency) under use?

    python -m benchmarks.soak [--sessions 3] [--minutes 2] [--models models] [--http]

The process under test plays the server: N simulated browser sessions (Streamlit AppTest, one
thread each, sharing this process's st.cache_resource, model cache and Store exactly as the
sessions of one `streamlit run` server do) each repeat, until the time is up: open the Grade
page (a new session), upload a photo (grade + heatmap), move the opacity slider (a new
overlay), and sign off. Meanwhile a screening run writes to the same database from this
process (core.screening, in-process preparation, as the Batch page does for small batches),
again and again. With --http, a real `streamlit run dashboard/app.py` server is also started
on 127.0.0.1 and its page is fetched over HTTP every second; its RSS, files and threads are
reported too. Loopback only; every loop is bounded by the deadline.

Reported for the first and the last tenth of the run: RSS, open file handles, threads (OS),
and p50/p95 latency of each session action. Flat means the end looks like the start.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "dashboard" / "views" / "grade.py"


def proc_stats(pid: int | str = "self") -> dict[str, float]:
    """RSS (MB), open file handles and OS threads of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "files": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"])}


def photo_png(seed: int) -> bytes:
    from PIL import Image

    from core.synthetic import generate_fundus

    rgb = generate_fundus(seed % 5, seed, size=384).image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


class Recorder:
    """Timestamped latencies and resource samples, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: list[tuple[float, str, float]] = []  # (t, action, ms)
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.http: list[tuple[float, float, dict[str, float]]] = []
        self.errors: list[str] = []

    def timed(self, action: str, fn) -> None:
        start = time.perf_counter()
        fn()
        with self.lock:
            self.latency.append((time.monotonic(), action, (time.perf_counter() - start) * 1e3))


def one_runtime() -> None:
    """Give every AppTest session of this process one Streamlit Runtime, as one server has.

    Each `AppTest.run()` installs its own mock Runtime in the process-global
    `Runtime._instance` and resets it to None when done, so AppTests on threads pull it from
    under each other (harness errors, not app errors). Here `Runtime.instance()` answers one
    shared mock built the way AppTest builds its own: one media store and one cache store for
    all sessions, like `streamlit run`.
    """
    from unittest.mock import MagicMock

    from streamlit.components.v2.component_manager import BidiComponentManager
    from streamlit.runtime import Runtime
    from streamlit.runtime.caching.storage.dummy_cache_storage import (
        MemoryCacheStorageManager,
    )
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    shared = MagicMock(spec=Runtime)
    shared.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    shared.cache_storage_manager = MemoryCacheStorageManager()
    shared.dataframe_source_mgr = DataframeSourceManager()
    components = BidiComponentManager()
    components.discover_and_register_components(start_file_watching=False)
    shared.bidi_component_registry = components
    Runtime.instance = classmethod(lambda cls: shared)  # type: ignore[method-assign]
    Runtime.exists = classmethod(lambda cls: True)  # type: ignore[method-assign]


def session_loop(worker: int, deadline: float, rec: Recorder, once: bool = False) -> int:
    """One simulated user, one new browser session per cycle; returns cycles completed."""
    from streamlit.testing.v1 import AppTest

    cycles = 0
    while (once and cycles == 0) or (not once and time.monotonic() < deadline):
        seed = 1000 * worker + cycles % 20  # a few photos again and again, like a clinic
        try:
            at = AppTest.from_file(str(PAGE), default_timeout=300)
            rec.timed("open page", at.run)
            at.file_uploader(key="grade-upload").set_value([(f"eye{seed}.png", photo_png(seed),
                                                             "image/png")])
            rec.timed("upload+grade+heatmap", at.run)
            sliders = [s for s in at.slider if str(s.key).startswith("opacity-")]
            if sliders:
                sliders[0].set_value(0.3 + 0.1 * (cycles % 5))
                rec.timed("explain (opacity)", at.run)
            key = next(t.key for t in at.text_input if str(t.key).startswith("clinician-"))
            at.text_input(key=key).set_value(f"Soak {worker}")
            at.button[0].click()
            rec.timed("sign off", at.run)
            if at.exception:
                raise RuntimeError(str([e.value for e in at.exception])[:300])
        except Exception as exc:  # noqa: BLE001 - counted and reported, the soak goes on
            with rec.lock:
                rec.errors.append(f"session {worker}: {type(exc).__name__}: {exc}"[:300])
        cycles += 1
    return cycles


def screening_loop(folder: Path, models: Path, db: Path, deadline: float, rec: Recorder,
                   once: bool = False) -> int:
    """The Batch page's small in-process run, repeated (a new run each time)."""
    from core.bundle import discover_bundles
    from core.screening import screen
    from core.store import Store

    bundles = [b for b in discover_bundles(models).bundles
               if "icdr_grade" in b.manifest.outputs][:1]
    store = Store(db)
    runs = 0
    while (once and runs == 0) or (not once and time.monotonic() < deadline):
        try:
            rec.timed("screening run (8 photos)",
                      lambda: screen(folder, bundles, store, workers=0, batch_size=4))
        except Exception as exc:  # noqa: BLE001
            with rec.lock:
                rec.errors.append(f"screening: {type(exc).__name__}: {exc}"[:300])
        runs += 1
    return runs


def reference_work() -> Callable[[], None]:
    """A fixed piece of CPU work (a small conv net and some NumPy), timed in the same process.

    Latency that grows over a soak means the app degrades only if this plain reference, which
    shares the cores and the interpreter with the sessions, stays flat while it does.
    """
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.rand(1, 3, 128, 128)
    a = np.random.default_rng(0).random((256, 256))

    def work() -> None:
        with torch.no_grad():
            net(x)
        np.linalg.svd(a)
        sum(i * i for i in range(50_000))  # pure Python: competes for the interpreter too

    return work


def sampler(deadline: float, rec: Recorder, every_s: float = 2.0) -> None:
    import gc

    work = reference_work()
    while time.monotonic() < deadline:
        rec.timed("gc.collect (sampler)", gc.collect)  # a full pass stalls every thread
        stats = {**proc_stats(), "objects": len(gc.get_objects())}
        with rec.lock:
            rec.samples.append((time.monotonic(), stats))
        rec.timed("reference (fixed CPU work)", work)
        time.sleep(every_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_loop(env: dict[str, str], deadline: float, rec: Recorder) -> None:
    """A real server on 127.0.0.1: its page fetched every second, its resources sampled."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py",
         "--server.address", "127.0.0.1", "--server.port", str(port),
         "--server.headless", "true"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    r.read()
                ms = (time.perf_counter() - start) * 1e3
                with rec.lock:
                    rec.http.append((time.monotonic(), ms, proc_stats(server.pid)))
            except OSError:
                pass
            time.sleep(1.0)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(rec: Recorder, t0: float, t1: float, args: argparse.Namespace, cycles: list[int],
           runs: int) -> None:
    span = t1 - t0
    early, late = t0 + span / 10, t1 - span / 10
    print(f"\n{args.sessions} sessions x {args.minutes} min, {sum(cycles)} session cycles, "
          f"{runs} screening runs, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}; first / last tenth of the run\n")
    print("| process | measure | start | end |")
    print("|---|---|---|---|")
    for name, samples in (("benchmark (sessions)", rec.samples),
                          ("streamlit server (HTTP)", [(t, s) for t, _, s in rec.http])):
        if not samples:
            continue
        first = [s for t, s in samples if t <= early] or [samples[0][1]]
        last = [s for t, s in samples if t >= late] or [samples[-1][1]]
        for key, unit in (("rss_mb", "RSS MB"), ("files", "open files"), ("threads", "threads"),
                          ("objects", "Python objects (gc)")):
            if key not in first[0]:
                continue
            print(f"| {name} | {unit} | {statistics.median(s[key] for s in first):.0f} | "
                  f"{statistics.median(s[key] for s in last):.0f} |")
    print("\n| action | n | p50 ms start | p95 ms start | p50 ms end | p95 ms end |")
    print("|---|---|---|---|---|---|")
    by_action: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, action, ms in rec.latency:
        by_action[action].append((t, ms))
    if rec.http:
        by_action["HTTP GET / (server)"] = [(t, ms) for t, ms, _ in rec.http]
    for action, items in by_action.items():
        # start/end: the first and last third of each action's samples (enough to rank)
        k = max(1, len(items) // 3)
        a, b = [ms for _, ms in items[:k]], [ms for _, ms in items[-k:]]
        print(f"| {action} | {len(items)} | {_pct(a, 50):.0f} | {_pct(a, 95):.0f} | "
              f"{_pct(b, 50):.0f} | {_pct(b, 95):.0f} |")
    if rec.errors:
        print(f"\n{len(rec.errors)} errors; first: {rec.errors[:3]}")


def _warm_up(folder: Path, args: argparse.Namespace, db: Path, rec: Recorder) -> None:
    """One session cycle and one screening run before the clock starts."""
    start = time.perf_counter()
    session_loop(99, 0.0, rec, once=True)
    screening_loop(folder, Path(args.models), db, 0.0, rec, once=True)
    print(f"warm-up {time.perf_counter() - start:.0f} s; {len(rec.errors)} errors "
          f"{rec.errors[:2]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--models", default=str(REPO / "models"), help="bundle folder")
    ap.add_argument("--http", action="store_true", help="also run and probe a real server")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        from core.synthetic import write_aptos_dataset

        aptos = write_aptos_dataset(tmp / "aptos", 8, seed=7, size=384)
        folder = aptos / "train_images"
        db = tmp / "soak.db"
        os.environ.update(DR_MODELS_DIR=str(Path(args.models).resolve()), DR_DB_PATH=str(db))
        env = dict(os.environ)
        one_runtime()
        warm = Recorder()  # imports, model loads, first compiles: not what a soak measures
        _warm_up(folder, args, db, warm)
        t0 = time.monotonic()
        deadline = t0 + 60 * args.minutes
        rec = Recorder()
        cycles = [0] * args.sessions
        runs = [0]

        def run_session(i: int) -> None:
            cycles[i] = session_loop(i, deadline, rec)

        threads = [threading.Thread(target=run_session, args=(i,), daemon=True)
                   for i in range(args.sessions)]
        threads.append(threading.Thread(
            target=lambda: runs.__setitem__(0, screening_loop(folder, Path(args.models), db,
                                                              deadline, rec)), daemon=True))
        threads.append(threading.Thread(target=sampler, args=(deadline, rec), daemon=True))
        if args.http:
            threads.append(threading.Thread(target=http_loop, args=(env, deadline, rec),
                                            daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60 * args.minutes + 600)
        report(rec, t0, time.monotonic(), args, cycles, runs[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
