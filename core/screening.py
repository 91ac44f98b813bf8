"""Screen a folder, a list of files or a zip: streaming, resumable, one bad file never stops it.

Decoding, quality and preprocessing run in worker processes; the models run in batches in this
process. Every batch is committed to the store as soon as it is graded, keyed by content hash +
bundle key, so a killed run resumes where it stopped without re-grading or duplicating anything.
A file whose content equals an earlier file's (a duplicate) is graded once: it gets its own row
in run_files with `duplicate_of` naming the first file, and shares that file's results.
Nothing is logged with file names or patient identifiers.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from core.bundle import Bundle, load_bundle
from core.errors import ConfigError, DRError, ImageDecodeError
from core.images import SUPPORTED_SUFFIXES, decode_image, image_fingerprint, read_image_bytes
from core.patients import compile_pattern, parse_identity
from core.predict import Predictor, PreparedImage, prepare_image
from core.preprocessing import FieldFit, Preprocessed, PreprocessSpec, decode_min_side
from core.quality import QualityReport
from core.records import UPLOAD_SOURCE_SUFFIX, RunKind
from core.safe_paths import DEFAULT_ZIP_LIMITS, ZipLimits, check_zip, is_inside, iter_zip
from core.store import FileRow, ResultRow, Store
from core.workers import worker_pool

Progress = Callable[[int, int, float, float], None]  # done, total, photos/s, eta seconds
THUMB_SIDE = 160


@dataclass(frozen=True)
class Task:
    """One file to screen: a path on disk, or bytes already in memory (zip member, upload)."""

    name: str
    path: str | None = None
    data: bytes | None = None
    error: str | None = None


@dataclass(frozen=True)
class Prepared:
    """What a worker sends back: small and picklable (no full-size RGB)."""

    name: str
    content_hash: str
    error: str | None = None
    done: bool = False  # already graded in this run (resume): nothing was decoded
    per_spec: tuple[tuple[np.ndarray, FieldFit, QualityReport], ...] = ()
    thumb: bytes | None = None


# ---------------------------------------------------------------- sources


def plan_sources(sources: Any, roots: Sequence[str | os.PathLike] | None = None,
                 zip_limits: ZipLimits = DEFAULT_ZIP_LIMITS) -> tuple[int, Iterator[Task]]:
    """(number of files, lazy tasks). sources: a folder, a zip, or a list of paths / (name,
    bytes) uploads. With roots, every server path must resolve inside them (dashboard)."""
    from core.safe_paths import resolve_inside_roots

    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    real_roots = None if roots is None else [Path(r).expanduser().resolve() for r in roots]
    parts: list[tuple[int, Callable[[], Iterator[Task]]]] = []
    for item in items:
        if isinstance(item, tuple):
            name, data = item
            parts.append(_zip_part(data, name, zip_limits) if str(name).lower().endswith(".zip")
                         else (1, lambda n=name, d=data: iter([Task(str(n), data=bytes(d))])))
            continue
        path = Path(item) if roots is None else resolve_inside_roots(item, roots)
        if path.is_dir():
            files = _walk(path)
            parts.append((len(files), lambda p=path, f=files: _folder_tasks(p, f, real_roots)))
        elif path.suffix.lower() == ".zip":
            parts.append(_zip_part(path, path.name, zip_limits))
        else:
            parts.append((1, lambda p=path: iter([_file_task(p, p.name)])))
    total = sum(n for n, _ in parts)
    return total, (task for _, make in parts for task in make())


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file below folder, sorted; symlinked folders are not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return out


def _folder_tasks(folder: Path, files: list[Path], roots: list[Path] | None) -> Iterator[Task]:
    for f in files:
        name = f.relative_to(folder).as_posix()
        if roots is not None and not is_inside(f, roots):
            yield Task(name, error="This file is a link that points outside the allowed "
                                   "screening folders; it was not read. Copy the photo itself.")
        else:
            yield _file_task(f, name)


def _file_task(path: Path, name: str) -> Task:
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return Task(name, error=f"Not a supported image type ('{path.suffix or 'no suffix'}'). "
                                f"Supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}.")
    return Task(name, path=str(path))


def _zip_part(src: Any, label: str, limits: ZipLimits) -> tuple[int, Callable[[], Iterator[Task]]]:
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(src) if isinstance(src, bytes) else src) as zf:
            n = len(check_zip(zf, f"'{label}'", limits))
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"'{label}' is not a valid zip file ({exc}). Create it again.") from exc

    def tasks() -> Iterator[Task]:
        for name, data in iter_zip(src, f"'{label}'", limits):
            if PurePath(name).suffix.lower() not in SUPPORTED_SUFFIXES:
                yield Task(name, error="Not a supported image type.")
            else:
                yield Task(name, data=data)

    return n, tasks


# ---------------------------------------------------------------- worker side


@dataclass(frozen=True)
class PrepJob:
    """What one run's preparation needs besides the file: passed per call, never held in a
    module global, so two runs in one process (the dashboard) cannot see each other's."""

    specs: tuple[PreprocessSpec, ...]
    done: frozenset[str] = frozenset()


_WORKER_JOB: PrepJob | None = None  # set only inside a pool worker, which serves one run


def _init_worker(job: PrepJob) -> None:
    """Per worker process (never the caller's): one thread each, the pool is the parallelism."""
    import cv2
    import torch

    global _WORKER_JOB
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _WORKER_JOB = job


def _worker_task(task: Task) -> Prepared:
    if _WORKER_JOB is None:
        raise RuntimeError("_worker_task runs only in a pool started with _init_worker")
    return prepare_task(task, _WORKER_JOB)


def prepare_task(task: Task, job: PrepJob) -> Prepared:
    """Read, hash, decode once per decode size, preprocess per spec, assess quality, thumbnail.

    Touches no process-wide setting: safe to call on the server's own threads.
    """
    label = PurePath(task.name).name  # messages name the file, never its folders
    if task.error:
        return Prepared(task.name, "", error=task.error)
    try:
        data = read_image_bytes(task.data if task.data is not None else task.path, name=label)
    except ImageDecodeError as exc:
        return Prepared(task.name, "", error=str(exc))
    digest = image_fingerprint(data)
    if digest in job.done:
        return Prepared(task.name, digest, done=True)
    try:
        first: dict[int, PreparedImage] = {}  # per decode size: field + quality found once
        per_spec = []
        thumb = None
        for spec in job.specs:
            side = decode_min_side(spec)  # same decode as the Grade page and training
            earlier = first.get(side)
            rgb = earlier.rgb if earlier else decode_image(data, min_side=side, name=label)
            item = prepare_image(rgb, spec, earlier)
            first.setdefault(side, item)
            per_spec.append((item.pre.tensor.numpy(), item.pre.field, item.quality))
            thumb = thumb or _thumbnail(item.pre.cropped)
    except ImageDecodeError as exc:
        return Prepared(task.name, digest, error=str(exc))
    return Prepared(task.name, digest, per_spec=tuple(per_spec), thumb=thumb)


def _thumbnail(rgb: np.ndarray) -> bytes:
    import cv2

    small = cv2.resize(rgb, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else b""


def _prepared_stream(tasks: Iterator[Task], workers: int, job: PrepJob,
                     start_method: str | None) -> Iterator[Prepared]:
    """In order; at most a few tasks in flight per worker so memory stays bounded."""
    if workers <= 0:
        for task in tasks:
            yield prepare_task(task, job)
        return
    with worker_pool(workers, _init_worker, (job,), start_method) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(_worker_task, (task,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ---------------------------------------------------------------- the engine


def screen(sources: Any, bundles: Sequence[Bundle], store: Store, *, run_id: int | None = None,
           roots: Sequence[str | os.PathLike] | None = None, pattern: str | None = None,
           workers: int | None = None, batch_size: int = 16, progress: Progress | None = None,
           stop_event: threading.Event | None = None, device: str = "auto",
           start_method: str | None = None, zip_limits: ZipLimits = DEFAULT_ZIP_LIMITS) -> int:
    """Screen `sources` with `bundles` (the first is primary) into `store`; returns the run id.

    run_id resumes that run (same bundles). stop_event stops cleanly after the current batch;
    the run is then 'interrupted' and can be resumed. workers=0 prepares in this process.
    """

    if not bundles:
        raise ConfigError("Choose at least one model bundle to screen with.")
    predictors = [Predictor(b, device) for b in bundles]
    keys = [b.key for b in bundles]
    run_id, pattern = _open_run(store, run_id, sources, keys, pattern, predictors, batch_size)
    rx = compile_pattern(pattern)
    specs = tuple(dict.fromkeys(b.manifest.preprocessing for b in bundles))
    seen = store.seen_files(run_id)
    done = frozenset.intersection(*(frozenset(store.done_hashes(run_id, k)) for k in keys))
    first_of = {h: f for f, h in sorted(seen.items()) if h}
    total, tasks = plan_sources(sources, roots, zip_limits)
    todo = (t for t in tasks if t.name not in seen)
    n_workers = max(1, (os.cpu_count() or 2) - 1) if workers is None else workers
    batcher = _Batcher(store, run_id, predictors, specs, rx, batch_size)
    meter = _Meter(progress, total, len(seen))
    status = "interrupted"
    try:
        for item in _prepared_stream(todo, n_workers, PrepJob(specs, done), start_method):
            batcher.add(item, first_of)
            meter.tick()
            if stop_event is not None and stop_event.is_set():
                break
        else:
            status = "done"
        batcher.flush()
    finally:
        store.finish_run(run_id, status)
    return run_id


def _open_run(store: Store, run_id: int | None, sources: Any, keys: list[str],
              pattern: str | None, predictors: list, batch_size: int) -> tuple[int, str | None]:
    if run_id is not None:
        info = store.reopen_run(run_id)
        if list(info.models) != keys:
            store.finish_run(run_id, info.status if info.status != "running" else "interrupted")
            raise ConfigError(f"Run {run_id} was screened with {list(info.models)}; resume it "
                              "with the same models, or start a new run.")
        return run_id, pattern if pattern is not None else info.run_settings.pattern
    settings = {"kind": _kind(sources).value, "pattern": pattern, "batch_size": batch_size,
                "models": {p.bundle.key: {**p.settings().to_json(), "name": p.manifest.name,
                                           "version": p.manifest.version,
                                           "demo": p.manifest.demo, "tier": p.manifest.tier}
                           for p in predictors}}
    return store.create_run(_describe(sources), keys, settings), pattern


def _kind(sources: Any) -> RunKind:
    """A folder or zip on the server can be read again later; uploads and lists cannot."""
    return RunKind.FOLDER if isinstance(sources, str | os.PathLike) else RunKind.UPLOAD


def _describe(sources: Any) -> str:
    if isinstance(sources, str | os.PathLike):
        return str(sources)
    items = list(sources) if not isinstance(sources, bytes) else []
    return f"{len(items)} {UPLOAD_SOURCE_SUFFIX}"


class _Batcher:
    """Collects prepared photos, grades them in batches, commits each batch in one transaction."""

    def __init__(self, store: Store, run_id: int, predictors: list, specs: tuple, rx: Any,
                 batch_size: int) -> None:
        self.store, self.run_id, self.predictors, self.specs = store, run_id, predictors, specs
        self.rx, self.batch_size = rx, max(1, batch_size)
        self.files: list[FileRow] = []
        self.graded: list[tuple[FileRow, Prepared]] = []
        self.names: set[str] = set()

    def add(self, item: Prepared, first_of: dict[str, str]) -> None:
        name = self._unique(item.name)
        ident = parse_identity(name, self.rx)
        dup = first_of.get(item.content_hash) if item.content_hash and not item.error else None
        row = FileRow(self.run_id, name, item.content_hash, ident.patient, ident.eye,
                      ident.field_index, duplicate_of=dup, error=item.error)
        if dup is None and not item.error and not item.done:
            first_of[item.content_hash] = name
            self.graded.append((row, item))
        self.files.append(row)
        if len(self.files) >= self.batch_size:
            self.flush()

    def _unique(self, name: str) -> str:
        base, k = name, 2
        while name in self.names:
            name, k = f"{base} ({k})", k + 1
        self.names.add(name)
        return name

    def flush(self) -> None:
        results = [r for p in self.predictors for r in self._grade(p)]
        thumbs = {it.content_hash: it.thumb for _, it in self.graded if it.thumb}
        self.store.put_thumbnails(thumbs)
        self.store.add_batch(self.files, results)
        self.files, self.graded = [], []

    def _grade(self, predictor: Any) -> list[ResultRow]:

        if not self.graded:
            return []
        k = self.specs.index(predictor.manifest.preprocessing)
        empty = np.zeros((0, 0, 3), np.uint8)
        items = []
        for _, it in self.graded:
            import torch

            tensor, field, quality = it.per_spec[k]
            items.append(PreparedImage(empty, Preprocessed(torch.from_numpy(tensor), empty, field),
                                       quality))
        preds = predictor.predict_prepared(items)
        return [_row(f, p, predictor.bundle.key) for (f, _), p in zip(self.graded, preds,
                                                                       strict=True)]


def _row(f: FileRow, p: Any, key: str) -> ResultRow:
    return ResultRow(
        f.run_id, f.file, f.content_hash, f.patient, f.eye, f.field_index, p.model, p.version,
        key, p.grade, p.probs, p.p_referable, p.p_vision_threatening, p.referable,
        p.vision_threatening, p.confidence, p.quality.level, tuple(p.quality.reasons),
        int(p.urgency), review_reasons=tuple(p.review_reasons),
        p_dme=p.p_dme, dme=p.dme)


class _Meter:
    def __init__(self, callback: Progress | None, total: int, already: int) -> None:
        self.callback, self.total, self.done, self.already = callback, total, already, already
        self.start = time.perf_counter()

    def tick(self) -> None:
        self.done += 1
        if self.callback is None:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = (self.done - self.already) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.callback(self.done, self.total, rate, max(eta, 0.0))


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from tqdm import tqdm

    from core import report
    from core.store import default_db_path

    store = Store(args.db or default_db_path())
    bundles = [load_bundle(m) for m in args.model]
    bar = tqdm(unit="photo", desc="Screening", file=sys.stderr)

    def progress(done: int, total: int, rate: float, eta: float) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        run_id = screen(args.folder, bundles, store, run_id=args.resume, pattern=args.pattern,
                        workers=args.workers, batch_size=args.batch_size, progress=progress)
    except DRError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    _print_summary(store, run_id)
    for path, per in ((args.out, "image"), (args.patients_out, "patient")):
        if path:
            report.worklist_csv(store, run_id, path, per=per)
            print(f"Worklist ({per}s): {path}")
    if args.pdf:
        report.pdf_report(store, run_id, args.pdf)
        print(f"PDF report: {args.pdf}")
    return 0


def _print_summary(store: Store, run_id: int) -> None:
    info = store.run(run_id)
    print(f"Run {run_id} ({info.status}) in {store.path}: {info.n_files} files, "
          f"{info.n_results} results, {info.n_errors} unreadable")
    print("Patients per urgency:")
    for label, n in store.worklist(run_id).counts().items():
        print(f"  {label}: {n}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m core.screening",
                                 description="Batch DR screening (research use only).")
    ap.add_argument("folder", help="folder (searched recursively) or .zip of fundus photos")
    ap.add_argument("--model", action="append", required=True,
                    help="model bundle folder; repeat for several (the first is primary)")
    ap.add_argument("--db", help="SQLite database (default $DR_DB_PATH or data/screening.db)")
    ap.add_argument("--out", help="write the per-photo worklist CSV here")
    ap.add_argument("--patients-out", help="write the per-patient worklist CSV here")
    ap.add_argument("--pdf", help="write the run's PDF report here")
    ap.add_argument("--resume", type=int, metavar="RUN_ID", help="resume this run")
    ap.add_argument("--pattern", help="regex with named groups patient and eye (optional field)")
    ap.add_argument("--workers", type=int, help="decode processes (default: CPU cores - 1)")
    ap.add_argument("--batch-size", type=int, default=16)
    return ap


if __name__ == "__main__":
    raise SystemExit(main())
