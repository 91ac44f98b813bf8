"""Feature distillation: a CNN grader's pooled features as a ViT encoder's starting point.

    python -m training.pretraining.distill_encoder --teacher models/demo-baseline \\
        --student models/mae-demo-encoder --photos data/synthetic-train4k/train_images \\
        --photos ../shared/realdata/eyepacs/train --steps 800 --out models/distilled-demo-encoder

Issue 15's fallback for when MAE pretraining on a CPU budget cannot carry the ViT tiers. The
student, an encoder bundle in RETFound's layout (`training.interchange.import_retfound` or this command),
learns to predict the teacher's standardised pooled features through a linear projector that
is dropped afterwards (smooth L1; AdamW, warmup then cosine; random flips, which the teacher
sees too). No grade is read: the photos are used unlabelled. The output is an encoder bundle of
the student's own architecture, so `train_retfound` / `train_lora` start from it through
`model.checkpoint_path`, and its provenance, which the cards' "Started from" line quotes, names
the teacher, the starting encoder and the photos. `--device cuda` runs student and teacher on a
GPU with bf16 autocast (written for when one is lent; the CPU path is the tested one).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.bundle import Bundle, build_bundle_model, load_bundle, save_bundle
from core.errors import ConfigError, DRError
from core.images import SUPPORTED_SUFFIXES
from core.manifest import Manifest, Provenance
from core.preprocessing import preprocess_file
from training.common.provenance import git_commit, utc_now
from training.trainer.distill import Teacher


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 800  # session 11: the loss flattens by step ~450 (320 stopped while it still fell)
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    seed: int = 0
    device: str = "cpu"  # "cuda" moves student, teacher and each batch (the photos stay in RAM)


@dataclass(frozen=True)
class DistillResult:
    bundle: Bundle
    photos: int
    skipped: int
    history: list[dict]  # one row per logged step: step, loss, lr, img_per_s


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A grader's image embedding before its classifier: DRClassifier's backbone, or a timm
    ViT's pre-logits."""
    if hasattr(model, "backbone"):
        return model.backbone(x)
    if hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    raise ConfigError(f"teacher {type(model).__name__} exposes no pooled features "
                      "(a baseline or RETFound-tier grader bundle is needed)")


def photo_paths(folders: Sequence[str | Path]) -> list[Path]:
    """Every image file under the folders (recursive, sorted: the order is the seed's)."""
    paths: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise ConfigError(f"--photos {root}: not a folder")
        paths += sorted(p for p in root.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not paths:
        raise ConfigError(f"no photos found under {', '.join(map(str, folders))}")
    return paths


def load_photos(paths: Sequence[Path], spec, progress: Callable[[str], None] = print
                ) -> tuple[torch.Tensor, int]:
    """Student-ready tensors (float16, to halve the memory) and how many files were skipped
    (unreadable, or no fundus field: what a grader would refuse)."""
    tensors, skipped = [], 0
    for i, path in enumerate(paths):
        try:
            tensors.append(preprocess_file(path, spec).tensor.half())
        except DRError:
            skipped += 1
        if (i + 1) % 500 == 0:
            progress(f"preprocessed {i + 1}/{len(paths)} photos")
    if not tensors:
        raise ConfigError("none of the photos could be read")
    return torch.stack(tensors), skipped


def _encoder(student: Bundle) -> nn.Module:
    if tuple(student.manifest.outputs) != ("features",):
        raise ConfigError(f"--student {student.path}: an encoder bundle is needed (outputs "
                          f"['features']), this one outputs {list(student.manifest.outputs)}")
    return build_bundle_model(student)


def _lr(s: DistillSettings, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, s.warmup_steps))
    return s.lr * warm * 0.5 * (1 + math.cos(math.pi * step / max(1, s.steps)))


def distill(teacher_dir: str | Path, student_dir: str | Path, photos: Sequence[str | Path],
            out: str | Path, settings: DistillSettings = DistillSettings(),
            progress: Callable[[str], None] = print, run_dir: str | Path | None = None
            ) -> DistillResult:
    """Train the student encoder to predict the teacher's features; write its bundle, and the
    loss log and curve to run_dir (default runs/<bundle folder name>-distill)."""
    student_bundle = load_bundle(student_dir)
    spec = student_bundle.manifest.preprocessing
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    student = _encoder(student_bundle).train().to(device)
    teacher = Teacher.load(teacher_dir, spec).to(device)
    x_all, skipped = load_photos(photo_paths(photos), spec, progress)
    with torch.no_grad():
        stats = torch.cat([
            pooled_features(teacher.model, teacher.adapt(x_all[i:i + 128].to(device).float()))
            for i in range(0, len(x_all), 128)])
        width = student(x_all[:2].to(device).float()).shape[1]
    mean, std = stats.mean(0), stats.std(0) + 1e-6
    proj = nn.Linear(width, stats.shape[1]).to(device)
    params = list(student.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay,
                            betas=(0.9, 0.95))
    history = _loop(student, proj, teacher, x_all, (mean, std), opt, settings, progress)
    bundle = _save(student, student_bundle, teacher, photos, len(x_all), settings, out)
    run = Path(run_dir) if run_dir is not None else Path("runs") / f"{Path(out).name}-distill"
    write_history(run, history)
    return DistillResult(bundle, len(x_all), skipped, history)


def _loop(student, proj, teacher, x_all, stats, opt, s: DistillSettings, progress) -> list[dict]:
    gen = torch.Generator().manual_seed(s.seed)
    history, start, order = [], time.perf_counter(), torch.empty(0, dtype=torch.long)
    for step in range(s.steps):
        if len(order) < s.batch_size:
            order = torch.randperm(len(x_all), generator=gen)
        idx, order = order[:s.batch_size], order[s.batch_size:]
        x = x_all[idx].to(stats[0].device).float()
        flips = torch.rand(2, generator=gen)
        x = x.flip(3) if flips[0] < 0.5 else x
        x = x.flip(2) if flips[1] < 0.5 else x
        with torch.no_grad():
            target = (pooled_features(teacher.model, teacher.adapt(x)) - stats[0]) / stats[1]
        for group in opt.param_groups:
            group["lr"] = _lr(s, step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):  # bf16 on a GPU
            loss = F.smooth_l1_loss(proj(student(x)).float(), target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(student.parameters()) + list(proj.parameters()), 1.0)
        opt.step()
        if (step + 1) % 10 == 0 or step + 1 == s.steps:
            rate = (step + 1) * s.batch_size / (time.perf_counter() - start)
            history.append({"step": step + 1, "loss": round(loss.item(), 5),
                            "lr": _lr(s, step), "img_per_s": round(rate, 1)})
            progress(f"step {step + 1}/{s.steps} loss {loss.item():.4f} ({rate:.1f} img/s)")
    return history


def _save(student: nn.Module, start: Bundle, teacher: Teacher, photos: Sequence, n: int,
          s: DistillSettings, out: str | Path) -> Bundle:
    m = start.manifest
    made = (f"feature distillation by this project (training.pretraining.distill_encoder, {s.steps} steps "
            f"x {s.batch_size}) from teacher {teacher.label} into encoder {m.name} "
            f"({(m.provenance.training_data if m.provenance else '') or 'unknown start'}), on "
            f"{n} unlabelled photos: {', '.join(str(p) for p in photos)}")
    manifest = Manifest(
        name=Path(out).name, version="1.0", tier=m.tier, created=utc_now(),
        git_commit=git_commit(), architecture=m.architecture, preprocessing=m.preprocessing,
        explanation=m.explanation, weights=m.weights,
        provenance=Provenance(training_data=made, command="python -m training.pretraining.distill_encoder"),
        demo=False, license=m.license, outputs=("features",))
    card = (f"# {manifest.name}\n\nEncoder only, {made}.\n\nNo grade of these photos was read; "
            "what the teacher knows, it learned from its own training labels (see its card). "
            "Train a head with `python -m training.train_retfound` or `train_lora` before "
            "grading.\n")
    if any("eyepacs" in str(p).lower() for p in photos):
        card += ("\nIts photos include EyePACS (Kaggle Diabetic Retinopathy Detection 2015): "
                 "use under Kaggle's competition terms, non-commercial research and education.\n")
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    return save_bundle(out, manifest, state, model_card=card)


def write_history(run_dir: Path, rows: list[dict]) -> tuple[Path, Path]:
    """distill_history.csv and distill_loss.png (loss against step) in run_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir.mkdir(parents=True, exist_ok=True)
    table, figure = run_dir / "distill_history.csv", run_dir / "distill_loss.png"
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "img_per_s"])
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="#1f77b4")
    ax.set_xlabel("step")
    ax.set_ylabel("smooth L1 to the teacher's\nstandardised features")
    ax.set_title("Feature distillation loss (training batches)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    return table, figure


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.pretraining.distill_encoder",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="grader bundle, e.g. models/demo-baseline")
    ap.add_argument("--student", required=True, help="encoder bundle to start from")
    ap.add_argument("--photos", action="append", required=True,
                    help="folder of unlabelled photos (repeatable)")
    ap.add_argument("--out", required=True, help="encoder bundle folder to write")
    ap.add_argument("--run-dir", default=None,
                    help="loss log and curve (default runs/<name of --out>-distill)")
    d = DistillSettings()
    for name in ("steps", "batch_size", "warmup_steps", "seed"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    settings = DistillSettings(args.steps, args.batch_size, args.lr, args.weight_decay,
                               args.warmup_steps, args.seed, args.device)
    try:
        result = distill(args.teacher, args.student, args.photos, args.out, settings,
                         run_dir=args.run_dir)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result.bundle.path}: {result.photos} photos ({result.skipped} skipped), "
          f"final loss {result.history[-1]['loss']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
