"""Knowledge distillation from a teacher bundle, for any tier (`optim.distill_from`).

The teacher is a grader bundle (e.g. models/demo-baseline), rebuilt as core builds it, frozen
and in eval mode on the training device. It sees the student's own augmented batch: the tensor
is un-normalised with the student's mean/std, resized (antialiased, the teacher's interpolation)
to the teacher's input size and normalised with the teacher's mean/std. Its raw logits (no
calibration temperature) are the soft targets:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * hard

where `hard` is the loop's own loss (class weights, label smoothing, ordinal term). The teacher
holds no training state, so a resumed run rebuilds it and continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.bundle import Bundle, build_bundle_model, load_bundle
from core.errors import ConfigError, DRError
from core.preprocessing import PreprocessSpec
from training.common.metrics import N_GRADES
from training.trainer.config import OptimConfig

_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "area": "area"}


@dataclass
class Teacher:
    """A frozen grader whose logits on the student's batch are the soft targets."""

    model: nn.Module
    spec: PreprocessSpec  # the teacher's own preprocessing (its manifest)
    student_spec: PreprocessSpec  # how the batches it is given were made
    bundle: Bundle

    @property
    def label(self) -> str:
        """name@version, as the card and the provenance line name the teacher."""
        return f"{self.bundle.manifest.name}@{self.bundle.manifest.version}"

    @classmethod
    def load(cls, folder: str | Path, student_spec: PreprocessSpec) -> Teacher:
        """Check and build the teacher (on the CPU; `to` moves it). ConfigError when the folder
        is not a grader bundle this student's batches can be adapted to."""
        bundle = teacher_bundle(folder, student_spec)
        try:
            with torch.random.fork_rng(devices=[]):  # building it must not move the student's RNG
                model = build_bundle_model(bundle)
        except DRError as exc:
            raise ConfigError(f"optim.distill_from: cannot build teacher {folder}: {exc}") from exc
        model.eval().requires_grad_(False)
        teacher = cls(model, bundle.manifest.preprocessing, student_spec, bundle)
        size = int(teacher.spec.input_size)
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, N_GRADES):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"optim.distill_from: teacher {bundle.name!r} returns {shape}, not "
                              f"(batch, {N_GRADES}) ICDR grade logits")
        return teacher

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """A batch normalised for the student's spec -> the same photos as the teacher's input."""
        s, t = self.student_spec, self.spec
        size = int(t.input_size)
        same_size = x.shape[-2:] == (size, size)
        if same_size and tuple(s.mean) == tuple(t.mean) and tuple(s.std) == tuple(t.std):
            return x
        pixels = x.float() * _column(s.std, x) + _column(s.mean, x)  # back to [0, 1] RGB
        if not same_size:
            mode = _MODES[t.interpolation]
            if mode == "area" and size > x.shape[-1]:
                mode = "bilinear"  # as core.preprocessing: area only means something shrinking
            extra = {} if mode == "area" else {"align_corners": False, "antialias": True}
            pixels = F.interpolate(pixels, size=(size, size), mode=mode, **extra).clamp_(0.0, 1.0)
        return (pixels - _column(t.mean, x)) / _column(t.std, x)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw teacher logits (float32) for a student batch."""
        return self.model(self.adapt(x)).float()


def teacher_bundle(folder: str | Path, student_spec: PreprocessSpec) -> Bundle:
    """The teacher's manifest, checked without touching its weights."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"optim.distill_from: {path} is not a folder; give a grader bundle "
                          "folder (manifest.json + weights), e.g. models/demo-baseline")
    try:
        bundle = load_bundle(path)
    except DRError as exc:
        raise ConfigError(f"optim.distill_from: {exc}") from exc
    m = bundle.manifest
    if "icdr_grade" not in m.outputs:
        raise ConfigError(f"optim.distill_from: bundle {m.name!r} ({path}) outputs "
                          f"{list(m.outputs)}, not ICDR grades: an encoder cannot be a teacher. "
                          "Distil from a grader bundle, e.g. models/demo-baseline")
    t = m.preprocessing
    for name in ("crop_to_field", "ben_graham"):
        if getattr(t, name) != getattr(student_spec, name):
            raise ConfigError(
                f"optim.distill_from: teacher {m.name!r} was trained with preprocessing.{name}="
                f"{getattr(t, name)}, this run uses {getattr(student_spec, name)}; the teacher's "
                f"input cannot be made from the student's batch; set preprocessing.{name}="
                f"{getattr(t, name)} or pick another teacher")
    if t.interpolation not in _MODES:
        raise ConfigError(f"optim.distill_from: teacher {m.name!r} has unknown interpolation "
                          f"{t.interpolation!r}")
    return bundle


def load_teacher(distill_from: str | None, student_spec: PreprocessSpec) -> Teacher | None:
    """The teacher `optim.distill_from` names, or None when distillation is off."""
    return None if distill_from is None else Teacher.load(distill_from, student_spec)


def distill_note(optim: OptimConfig) -> str | None:
    """How the card and the provenance line name the distillation, or None when it is off:
    "demo-baseline@0.1.0 (models/demo-baseline; alpha 0.7, T 2.0)"."""
    if optim.distill_from is None:
        return None
    try:
        m = load_bundle(optim.distill_from).manifest
        name = f"{m.name}@{m.version}"
    except DRError:
        name = Path(optim.distill_from).name
    return (f"{name} ({optim.distill_from}; alpha {optim.distill_alpha}, "
            f"T {optim.distill_temperature})")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 hard_loss: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * hard_loss.

    KL is summed over the grades and averaged over the batch; T^2 keeps the soft term's
    gradient scale independent of T (Hinton et al. 2015)."""
    t = float(temperature)
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1.0 - alpha) * hard_loss


def _column(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)
