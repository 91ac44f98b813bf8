"""The fields of a training run's config (TrainConfig and its sections), with their checks.

Below both ways of reading a config file: `training.trainer.config.load_config` (the project's
layout) and `training.trainer.guide_config` (the model-architecture guide's layout) need these
classes, and neither needs the other's reader here. The resolved config is saved with every run
and hashed into the bundle's provenance, so field names do not change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import ConfigError
from core.preprocessing import PreprocessSpec
from core.strict import to_jsonable


@dataclass(frozen=True)
class SourceConfig:
    """One labelled set of a run that mixes several (data.sources), read by its preset."""

    preset: Literal["synthetic", "aptos", "eyepacs", "messidor2", "idrid"]
    root: str | None = None  # the distributor's folder (see DataConfig.root)
    csv: str | None = None
    images: str | None = None
    name: str | None = None  # prefixes its ids and groups ("messidor2:IM000012"); default preset

    @property
    def label(self) -> str:
        return self.name or self.preset


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from. `preset` names the CSV layout (see training.trainer.datasets)."""

    preset: Literal["synthetic", "aptos", "eyepacs", "messidor2", "idrid", "csv"] = "synthetic"
    # the distributor's folder as downloaded (e.g. ../shared/realdata/idrid): the preset knows
    # where its labels CSV and images lie inside it; `csv` / `images` override
    root: str | None = None
    csv: str | None = None
    images: str | None = None
    id_column: str | None = None  # preset "csv" only
    label_column: str | None = None
    patient_column: str | None = None
    image_suffix: str | None = None
    # DME head (model.dme_head): photos of a source without DME labels whose ICDR grade is 0-1
    # train the DME head as "no DME": those grades mean no exudates (ICDR), and without them the
    # head never sees that source's camera and calls DME on its healthy eyes (issue 33)
    dme_implied_negative: bool = False
    val_fraction: float = 0.2  # selection split: chooses the epoch
    # > 0: a separate calibration split (temperature, operating thresholds, cut points), so the
    # figures of the selection split are not tuned on; 0: calibrate on the selection split
    calibration_fraction: float = 0.0
    # < 1: train on this fraction of the training patients only (stratified on each patient's
    # worst grade); the test fold, selection and calibration splits stay exactly as at 1.0, so
    # runs at several fractions form a learning curve on the same photos (training.evaluation.learning_curve)
    train_fraction: float = 1.0
    cv_folds: int = 5
    cv_fold: int | None = None  # hold out this patient-disjoint fold as the test set (CV runs)
    cache_dir: str = "data/cache"
    cache_size: int | None = None  # side of cached crops; default 1.15 x input_size
    num_workers: int = 2
    synthetic_n: int = 400
    synthetic_seed: int = 0
    synthetic_size: int = 384
    synthetic_dir: str = "data/synthetic"
    limit: int | None = None  # use the first N rows (smoke runs; per source)
    augment: bool = True  # flips, rotation, colour jitter, scale (after cropping)
    # several labelled sets in one run: each record's id and group are prefixed "name:"; when
    # given, preset / root / csv / images and the column settings above must stay unset
    sources: tuple[SourceConfig, ...] = ()
    # > 0: hold out this fraction of the groups (stratified by source and worst grade) as a
    # fixed test set drawn from `seed` alone, so runs differing only in model settings test on
    # the same photos
    test_fraction: float = 0.0
    # leave-one-source-out: every photo of this source (a data.sources name) is the test set
    hold_out_source: str | None = None

    def source_names(self) -> list[str]:
        """The names records carry in `source`: one per data.sources entry, else the preset."""
        return [s.label for s in self.sources] if self.sources else [self.preset]

    def check(self, where: str = "config") -> None:
        """Ranges and combinations the field types cannot say; ConfigError naming the field."""
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"{where}: field 'data.test_fraction': must be in [0, 1), got "
                              f"{self.test_fraction}")
        chosen = [f"data.{k}" for k, on in (("cv_fold", self.cv_fold is not None),
                                            ("test_fraction", self.test_fraction > 0),
                                            ("hold_out_source", self.hold_out_source is not None))
                  if on]
        if len(chosen) > 1:
            raise ConfigError(f"{where}: {' and '.join(chosen)} each choose the test set and "
                              "a run has one: set only one of data.cv_fold, data.test_fraction "
                              "and data.hold_out_source")
        self._check_sources(where)

    def _check_sources(self, where: str) -> None:
        names = self.source_names()
        if len(set(names)) < len(names):
            raise ConfigError(f"{where}: field 'data.sources': names must differ (they prefix "
                              f"the ids), got {names}; give each a `name`")
        if self.sources:
            defaults = DataConfig()
            clash = [k for k in ("preset", "root", "csv", "images", "id_column", "label_column",
                                 "patient_column", "image_suffix")
                     if getattr(self, k) != getattr(defaults, k)]
            if clash:
                raise ConfigError(f"{where}: data.sources names every source itself; remove "
                                  f"{', '.join('data.' + k for k in clash)} (or move them into "
                                  "a source)")
        if self.hold_out_source is not None:
            if self.hold_out_source not in names:
                raise ConfigError(f"{where}: field 'data.hold_out_source': no source named "
                                  f"{self.hold_out_source!r}; available: {names}")
            if len(names) < 2:
                raise ConfigError(f"{where}: field 'data.hold_out_source': needs at least two "
                                  "data.sources (the others train the model)")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture per tier. timm name for the baseline; ViT kwargs / checkpoint for RETFound."""

    tier: str = "baseline"  # a registered tier (core.archs.tiers); checked by load_config
    name: str = "resnet50"  # timm name (baseline)
    pretrained: bool = False
    weights_path: str | None = None  # local timm weights for pretrained=True offline
    dropout_rate: float = 0.3
    checkpoint_path: str | None = None  # RETFound .pth or an encoder/retfound bundle folder
    vit: dict[str, Any] = field(default_factory=dict)  # build_retfound_vit kwargs (no checkpoint)
    global_pool: Literal["avg", "token"] = "avg"
    drop_path_rate: float = 0.2
    grad_checkpointing: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    head_dropout: float = 0.3
    target_modules: tuple[str, ...] = ("qkv",)
    # a second head for macular oedema (issue 33; baseline tier), trained where a source has
    # DME labels (messidor2, idrid) and masked elsewhere, calibrated on its own
    dme_head: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation. lr = blr x batch / 256 when blr is set (RETFound's rule)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-4
    blr: float | None = None
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float = 0.65  # RETFound tiers only
    # the new classifier head's lr over the base lr: a head initialised at std 2e-5 (RETFound's)
    # barely moves at a ViT fine-tuning lr of ~6e-5 in a dozen epochs; 10 lets it keep up
    head_lr_scale: float = 1.0
    # "linear_probe": the head starts as a logistic regression on the starting features of the
    # training photos (LP-FT, training.trainer.head_probe); "default": the tier's own init
    head_init: Literal["default", "linear_probe"] = "default"
    warmup_epochs: float = 1.0
    schedule: Literal["cosine", "plateau"] = "cosine"
    freeze_epochs: int = 1  # baseline stage 1: head only
    grad_accum: int = 1
    clip_grad: float | None = 1.0
    label_smoothing: float = 0.1
    class_balance: Literal["none", "loss", "sampler"] = "loss"
    ordinal: bool = False  # regression + QWK-tuned thresholds
    # ordinal: serve severe NPDR vs PDR as the more probable of the two, not by the 3/4 cut
    # point, which rests on the few grade-3/4 photos of a calibration split
    vt_grade_by_probability: bool = False
    amp: bool = True
    # CPU training fast path: channels_last for CNNs and bf16 autocast for the training steps
    # where the CPU has native bf16 (AVX-512 BF16 / AMX); every scored split stays fp32, as the
    # bundle is served (python -m benchmarks.cpu_fast_path times it against a plain fp32 step)
    cpu_fast: bool = False
    cpu_bf16: bool = True  # under cpu_fast; false: channels_last alone, fp32 (the pairing's reference)
    compile: bool = False
    patience: int = 5  # early stopping on the selection metric
    # what chooses the best epoch on the selection split; referable AUROC is steadier than
    # kappa on a few dozen real photos and is the screening decision itself
    select_metric: Literal["kappa_quadratic", "referable_auroc"] = "kappa_quadratic"
    min_sensitivity: float = 0.9  # operating point for the referable threshold
    # knowledge distillation (training.trainer.distill): a grader bundle folder whose raw logits are
    # soft targets; loss = alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * hard loss
    distill_from: str | None = None
    distill_alpha: float = 0.7
    distill_temperature: float = 2.0


@dataclass(frozen=True)
class TrainConfig:
    """A whole run: data, model, optimisation, preprocessing, outputs."""

    run_name: str = "run"
    out_dir: str = "runs"
    bundle_dir: str | None = None  # where the best epoch's bundle goes (default run dir/bundle)
    bundle_name: str | None = None
    version: str = "1.0"
    demo: bool = False
    seed: int = 0
    device: str = "auto"
    tensorboard: bool = True
    wandb: bool = False
    # score the best epoch (calibration, thresholds, cut points, card figures) on the photo and
    # its mirror image averaged; the bundle records it and is served the same way
    flip_tta: bool = False
    onnx: bool = True  # the bundle also carries its ONNX graph, checked against PyTorch
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    preprocessing: PreprocessSpec = PreprocessSpec()

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))
