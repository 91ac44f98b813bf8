"""Grading on ONNX Runtime against PyTorch eager on the CPU, in the same run (issue 34).

    python -m benchmarks.onnx_cpu [--model models/multisource-lite0] [--repeats 15]
                                  [--n 200] [--size 512] [--workers N] [--rounds 2]
                                  [--photo ../shared/fundus_samples/30_left.jpeg]

1. One photo, decode -> decision (heatmap excluded): a 3 MP JPEG (2048x1536; the real EyePACS
   photo `--photo` upscaled, or a synthetic one without it) as bytes through
   `Predictor.predict` (decode, field, quality, preprocess, grade as served: flip TTA where the
   bundle was calibrated so), with ONNX Runtime and with PyTorch (DR_CPU_ONNX=0), beside a
   plain reference (PIL decode, resize to the input size, one PyTorch forward). Also the model
   alone (the batch of one and its mirror) per engine. Timed round-robin, median of --repeats.
2. Batch screening: `core.screening.screen` end to end (worker pool, batched model, SQLite
   commits) over N synthetic JPEGs (benchmarks.screening's photos), each engine in turn for
   --rounds rounds on the same folder (a fresh database each time): photos/s.
Targets (issue 34, 2-core CPU): one photo under 40 ms; screening >= 3x its PyTorch rate.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core import settings
from core.bundle import Bundle, load_bundle
from core.cache import ModelCache
from core.predict import Predictor

TARGET_MS = 40.0


def three_mp_jpeg(photo: Path | None) -> bytes:
    """A 2048x1536 JPEG (quality 92): the real photo upscaled, else a synthetic fundus."""
    if photo is not None and photo.is_file():
        img = Image.open(photo).convert("RGB").resize((2048, 1536), Image.BICUBIC)
    else:
        from core.synthetic import generate_fundus

        img = Image.fromarray(generate_fundus(2, 5, size=1536, width=2048).image)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _plain(model: torch.nn.Module, data: bytes, side: int) -> None:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((side, side))
    x = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None]
    with torch.inference_mode():
        model(x)


def _round_robin(fns: dict, repeats: int) -> dict[str, float]:
    """Median ms per function, calls interleaved so machine noise hits every column alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


def one_photo(bundle: Bundle, data: bytes, repeats: int) -> list[tuple[str, float]]:
    cache = ModelCache()
    ort = Predictor(bundle, "cpu", cache=cache)
    with settings.override(cpu_onnx=False):
        eager = Predictor(bundle, "cpu", cache=cache)
    assert (ort.engine, eager.engine) == ("onnxruntime", "pytorch"), (ort.engine, eager.engine)
    x = ort.prepare(data).pre.tensor[None]
    side = bundle.manifest.preprocessing.input_size
    with eager.loaded.use() as model:
        ms = _round_robin({
            "ort": lambda: ort.predict(data), "eager": lambda: eager.predict(data),
            "prepare": lambda: ort.prepare(data),
            "ort model": lambda: ort.logits(x), "eager model": lambda: eager.logits(x),
            "plain": lambda: _plain(model, data, side)}, repeats)
    tta = " + mirror" if ort.tta else ""
    return [
        (f"ours, ONNX Runtime: decode+quality+crop+grade{tta}", ms["ort"]),
        (f"ours, PyTorch eager (DR_CPU_ONNX=0): decode+quality+crop+grade{tta}", ms["eager"]),
        ("plain reference: PIL decode + resize + one PyTorch forward", ms["plain"]),
        ("  of which decode+field+quality+preprocess (both engines)", ms["prepare"]),
        (f"  model alone, ONNX Runtime (photo{tta}, one session call)", ms["ort model"]),
        (f"  model alone, PyTorch eager (photo{tta})", ms["eager model"]),
    ]


def screening(bundle: Bundle, n: int, size: int, workers: int, rounds: int,
              batch_size: int) -> dict[str, list[float]]:
    from benchmarks.screening import write_photos
    from core.screening import screen
    from core.store import Store

    rates: dict[str, list[float]] = {"onnxruntime": [], "pytorch": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        write_photos(folder, n, size)
        for k in range(rounds):
            for engine in ("pytorch", "onnxruntime"):
                with settings.override(cpu_onnx=engine == "onnxruntime"):
                    assert Predictor(bundle, "cpu").engine == engine  # loaded: not throughput
                    store = Store(Path(tmp) / f"{engine}-{k}.sqlite")
                    start = time.perf_counter()
                    run = screen(folder, [bundle], store, workers=workers, batch_size=batch_size,
                                 device="cpu")
                    rates[engine].append(n / (time.perf_counter() - start))
                    assert len(store.files_for_run(run)) == n
                    recorded = store.run(run).run_settings.models[bundle.key].settings
                    assert recorded["engine"] == engine, recorded
    return rates


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/multisource-lite0")
    p.add_argument("--photo", type=Path, default=Path("../shared/fundus_samples/30_left.jpeg"))
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", type=int, nargs="+", default=[None],
                   help="screening's decode processes, one table row pair per value "
                        "(default: screen()'s own default)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--skip-screening", action="store_true")
    p.add_argument("--skip-single", action="store_true")
    args = p.parse_args(argv)
    bundle = load_bundle(args.model)
    data = three_mp_jpeg(args.photo)
    machine = (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
               f"torch threads {torch.get_num_threads()}")
    if not args.skip_single:
        single(bundle, data, machine, args.repeats)
    if args.skip_screening:
        return
    screening_table(bundle, args)


def single(bundle: Bundle, data: bytes, machine: str, repeats: int) -> None:
    rows = one_photo(bundle, data, repeats)
    print(f"\nOne 2048x1536 JPEG ({len(data) // 1024} KB) -> decision, {bundle.name} "
          f"{bundle.manifest.version}, {machine}, median of {repeats}:\n")
    print("| path | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    verdict = "met" if rows[0][1] < TARGET_MS else "NOT met"
    print(f"\nTarget: under {TARGET_MS:.0f} ms with ONNX Runtime: {verdict}; ONNX Runtime / "
          f"PyTorch: {rows[1][1] / rows[0][1]:.1f}x faster end to end, "
          f"{rows[5][1] / rows[4][1]:.1f}x for the model alone. "
          f"Load average {os.getloadavg()[0]:.1f}.")


def screening_table(bundle: Bundle, args: argparse.Namespace) -> None:
    print(f"\nBatch screening, {args.n} synthetic {args.size} px JPEGs, {bundle.name}, batch "
          f"{args.batch_size}, {args.rounds} round(s), engines interleaved:\n")
    print("| engine | workers | photos/s (median) | rounds | vs PyTorch, same workers |\n"
          "|---|---|---|---|---|")
    for workers in args.workers:
        rates = screening(bundle, args.n, args.size, workers, args.rounds, args.batch_size)
        eager = statistics.median(rates["pytorch"])
        label = workers if workers is not None else f"default ({screen_default_workers()})"
        for engine, name in (("pytorch", "PyTorch eager (DR_CPU_ONNX=0)"),
                             ("onnxruntime", "ONNX Runtime")):
            r = statistics.median(rates[engine])
            print(f"| {name} | {label} | {r:.1f} | "
                  f"{', '.join(f'{x:.1f}' for x in rates[engine])} | {r / eager:.1f}x |",
                  flush=True)
    print(f"\nLoad average {os.getloadavg()[0]:.1f} at the end.")


def screen_default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


if __name__ == "__main__":
    main()
