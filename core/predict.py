"""Predictor: a bundle in, typed predictions out, for one photo or a batch.

Quality is assessed before the model runs: a rejected photo gets no grade (ungradable is a
result in its own right). Probabilities are temperature-calibrated; grade, flags, urgency and
review reasons come from one call of core.grading.decide (operating thresholds first).
Logits come from ONNX Runtime on the CPU where the bundle carries a verified graph
(core.onnx_engine), else from PyTorch; each result's settings name the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from core import grading
from core.bundle import Bundle, tier_of
from core.cache import LoadedModel, ModelCache, default_cache
from core.devices import autocast_for
from core.errors import BundleError
from core.explain import Explanation, explain
from core.images import decode_image
from core.onnx_engine import ONNXRUNTIME, PYTORCH, tell_once
from core.preprocessing import FieldFit, Preprocessed, PreprocessSpec, decode_min_side, preprocess
from core.quality import QualityReport, assess
from core.records import PredictionSettings
from core.settings import current as current_settings

DECIDED = "decided"  # Predictor.explain's default target: the grade predict() decides
UNGRADABLE_LABEL = "grade {k} (most probable; ungradable photo, no grade decided)"


@dataclass(frozen=True)
class Prediction:
    """One photo's result. grade/probs are None when the photo is ungradable."""

    grade: int | None
    probs: tuple[float, ...] | None
    p_referable: float | None
    p_vision_threatening: float | None
    referable: bool | None
    vision_threatening: bool | None
    confidence: float | None
    quality: QualityReport
    model: str
    version: str
    latency_ms: float
    field: FieldFit | None = None
    settings: PredictionSettings | None = None  # preprocessing + thresholds used (typed)

    @property
    def gradable(self) -> bool:
        return self.grade is not None

    decision: grading.Decision | None = None  # the one call grade/flags/urgency came from
    p_dme: float | None = None  # calibrated p(DME); None: ungradable or no DME output

    @property
    def dme(self) -> bool | None:
        """DME at the bundle's threshold; None when not assessed (no DME output, ungradable)."""
        return self.decision.dme if self.decision is not None else None

    @property
    def urgency(self) -> grading.Urgency:
        if self.decision is not None:
            return self.decision.urgency
        return grading.urgency_of(self.grade, gradable=self.gradable, referable=self.referable,
                                  vision_threatening=self.vision_threatening)

    @property
    def review_reasons(self) -> tuple[str, ...]:
        return self.decision.review_reasons if self.decision is not None else ()

    @property
    def not_fundus(self) -> bool:
        return self.decision is not None and self.decision.not_fundus


@dataclass(frozen=True)
class PreparedImage:
    """A decoded photo, what the model sees, and its quality report."""

    rgb: np.ndarray
    pre: Preprocessed
    quality: QualityReport


def prepare_image(rgb: np.ndarray, spec: PreprocessSpec,
                  earlier: PreparedImage | None = None) -> PreparedImage:
    """Preprocess a decoded photo for one spec and assess its quality.

    Field and quality depend only on the photo: pass `earlier` (the same photo prepared for
    another spec) to reuse them instead of finding the field and grading quality again.
    """
    field = earlier.pre.field if earlier is not None else None
    pre = preprocess(rgb, spec, field=field)
    quality = earlier.quality if earlier is not None else assess(rgb, field=pre.field)
    return PreparedImage(rgb, pre, quality)


def flip_averaged_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fp32 logits of the batch and of its mirror image (left-right), averaged: flip TTA, the
    one definition training calibrates with and serving applies."""
    return (model(x).float() + model(torch.flip(x, dims=[3])).float()) / 2


N_GRADES = len(grading.GRADE_NAMES)


def split_scores(logits: torch.Tensor, calibration: Any, has_dme: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """(grade probabilities, p(DME)) from raw logits with the bundle's own temperatures: the
    grade softmax over the first 5 columns, the DME sigmoid over the 6th."""
    grades = torch.softmax(logits[:, :N_GRADES] / calibration.temperature, dim=1)
    probs = grades.numpy().astype(np.float64)
    if not has_dme:
        return probs, None
    if logits.shape[1] <= N_GRADES:
        raise BundleError(f"the bundle declares a DME output but its model returns "
                          f"{logits.shape[1]} logits, not {N_GRADES + 1}")
    dme = torch.sigmoid(logits[:, N_GRADES] / calibration.dme_temperature)
    return probs, dme.numpy().astype(np.float64)


class Predictor:
    """Owns one cached model on one device; safe to share between threads."""

    def __init__(self, bundle: Bundle, device: str = "auto", *, cache: ModelCache | None = None,
                 tta: bool | None = None, max_batch: int = 16, cpu_int8: bool | None = None) -> None:
        if "icdr_grade" not in bundle.manifest.outputs:
            raise BundleError(f"Bundle {bundle.name!r} outputs {list(bundle.manifest.outputs)}, "
                              "not ICDR grades: it is an encoder for training, not a grader.")
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.tier = tier_of(bundle)
        # None: as the bundle was calibrated (a calibration fitted under flip TTA is served so)
        self.tta = self.manifest.calibration.flip_tta if tta is None else tta
        self.max_batch = max(1, max_batch)
        self.cache = cache or default_cache()
        first = self.cache.get(bundle, device)  # load now: a broken bundle fails here
        self.device = first.device
        self.n_params = int(sum(p.numel() for p in first.module.parameters()))
        if cpu_int8 is None:
            cpu_int8 = current_settings().cpu_int8
        # int8 only where it pays and stays exact to swap: tiers that say so, on the CPU
        self.int8 = cpu_int8 and self.device.type == "cpu" and self.tier.int8
        if self.int8:
            self.cache.get_int8(bundle)
        self.engine = self._choose_engine()
        cal = self.manifest.calibration
        self.thresholds = cal.thresholds()
        self.has_dme = self.manifest.has_dme
        self.near_chance = grading.near_chance(self.manifest.evaluation)

    # -- models: looked up in the cache on every use, never held (the cache owns them) -----------
    @property
    def loaded(self) -> LoadedModel:
        """The fp32 model. Not kept on the Predictor: pages keep Predictors for days, and a
        held model is one the cache's memory bound can neither count nor free."""
        return self.cache.get(self.bundle, str(self.device))

    def _choose_engine(self) -> str:
        """ONNX Runtime where it applies: the CPU, fp32 (int8 stays PyTorch's dynamic int8),
        DR_CPU_ONNX on, and a graph that loads and verifies; else PyTorch, saying why once."""
        if self.device.type != "cpu" or self.int8:
            return PYTORCH
        if not current_settings().cpu_onnx:
            tell_once(self.bundle, "DR_CPU_ONNX=0", level=logging.INFO)
            return PYTORCH
        if self.manifest.onnx is None:
            tell_once(self.bundle, "the bundle carries no ONNX graph", level=logging.INFO)
            return PYTORCH
        try:
            self.cache.get_onnx(self.bundle)
        except BundleError as exc:
            tell_once(self.bundle, str(exc))
            return PYTORCH
        return ONNXRUNTIME

    @property
    def grader(self) -> LoadedModel:
        """The model grades come from: the int8 copy where enabled, else the fp32 model."""
        return self.cache.get_int8(self.bundle) if self.int8 else self.loaded

    # -- inputs -------------------------------------------------------------------------------
    def prepare(self, source: Any) -> PreparedImage:
        """Decode (bytes, path, file or RGB array), find the field, assess quality, preprocess."""
        spec = self.manifest.preprocessing
        rgb = source if isinstance(source, np.ndarray) else decode_image(
            source, min_side=decode_min_side(spec))
        return prepare_image(rgb, spec)

    # -- outputs ------------------------------------------------------------------------------
    def predict(self, source: Any) -> Prediction:
        start = time.perf_counter()
        prepared = self.prepare(source)
        return self.predict_prepared([prepared], started=[start])[0]

    def predict_batch(self, sources: Sequence[Any]) -> list[Prediction]:
        """Decode errors propagate (callers that must go on use prepare() per item)."""
        starts = [time.perf_counter()] * len(sources)
        return self.predict_prepared([self.prepare(s) for s in sources], started=starts)

    def predict_prepared(self, items: Sequence[PreparedImage],
                         started: Sequence[float] | None = None) -> list[Prediction]:
        started = list(started) if started is not None else [time.perf_counter()] * len(items)
        gradable = [i for i, it in enumerate(items) if it.quality.gradable]
        probs: dict[int, np.ndarray] = {}
        p_dme: dict[int, float] = {}
        engines: dict[int, str] = {}  # what graded each photo (a failed graph: PyTorch after)
        for lo in range(0, len(gradable), self.max_batch):
            chunk = gradable[lo:lo + self.max_batch]
            batch = torch.stack([items[i].pre.tensor for i in chunk])
            grade_probs, dme_probs = self.scores(batch)
            for j, i in enumerate(chunk):
                probs[i], engines[i] = grade_probs[j], self.engine
                if dme_probs is not None:
                    p_dme[i] = float(dme_probs[j])
        return [self._result(it, probs.get(i), started[i], engines.get(i, self.engine),
                             p_dme.get(i))
                for i, it in enumerate(items)]

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw logits (fp32, on the CPU) for a normalised batch; flip TTA averages logits."""
        if self.engine == ONNXRUNTIME:
            try:
                onnx = self.cache.get_onnx(self.bundle)
                return onnx.flip_averaged(batch) if self.tta else onnx(batch)
            except Exception as exc:  # never a failed grade: PyTorch from here on
                self.engine = PYTORCH
                tell_once(self.bundle, f"ONNX Runtime failed ({type(exc).__name__}: {exc})")
        x = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and self.tier.channels_last(self.manifest.explanation.arch):
            x = x.contiguous(memory_format=torch.channels_last)
        with self.grader.use() as model, torch.inference_mode(), autocast_for(self.device):
            out = flip_averaged_logits(model, x) if self.tta else model(x).float()
        return out.cpu()

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated grade probabilities (N, 5)."""
        return self.scores(batch)[0]

    def scores(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated grade probabilities (N, 5) and p(DME) (N,), None without a DME output.
        A DME bundle's model returns 6 logits: the 5 grades, then its DME head's one logit."""
        return split_scores(self.logits(batch), self.manifest.calibration, self.has_dme)

    def explain(self, prepared: PreparedImage, method: str | None = None,
                target: int | str = DECIDED, layer: str | None = None, *,
                prediction: Prediction | None = None) -> Explanation:
        """Heatmap for one prepared photo with the bundle's default layer and method.

        Explains, by default, the grade `predict()` gives this photo (operating rule and grade
        cut points applied): `prediction.grade` when given, else decided here the same way.
        Why: the argmax class can differ from the decided grade, and a map of another grade
        than the one reported misleads. The label says which: "grade 2 (decided)". An
        ungradable photo has no decided grade: its map explains the most probable class and
        its label says the photo was ungradable. Other targets: "predicted" (the argmax
        class), "referable" (grades 2-4), or a grade 0-4.

        Runs in fp32 under the model's lock with this bundle's adapter active (LoRA), on the
        PyTorch fp32 model even when grades come from the int8 copy or ONNX Runtime (gradients
        need it).
        """
        spec = self.manifest.explanation
        layer = self.tier.explain_layer(layer or spec.target_layer)
        label = None
        if target == DECIDED:
            target, label = self._decided_target(prepared, prediction)
        with self.loaded.use() as model:
            exp = explain(model, prepared.pre.tensor.unsqueeze(0), method=method or spec.method,
                          target=target, layer=layer, arch=spec.arch)[0]
        if label is None or exp.target_class is None:  # a class-agnostic method says so itself
            return exp
        return replace(exp, target=label.format(k=exp.target_class))

    def _decided_target(self, prepared: PreparedImage, prediction: Prediction | None
                        ) -> tuple[int | str, str]:
        """(what core.explain targets, the label's pattern) for the decided grade."""
        if prediction is None:
            prediction = self.predict_prepared([prepared])[0]
        elif (prediction.model, prediction.version) != (self.manifest.name, self.manifest.version):
            raise ValueError(f"prediction is from {prediction.model} {prediction.version}, not "
                             f"{self.manifest.name} {self.manifest.version}")
        if prediction.grade is None:
            return "predicted", UNGRADABLE_LABEL
        return prediction.grade, "grade {k} (decided)"

    def settings(self, engine: str | None = None) -> PredictionSettings:
        """What each result records: preprocessing, thresholds and the engine in force."""
        cal = self.manifest.calibration
        cuts = None if cal.grade_thresholds is None else tuple(cal.grade_thresholds)
        return PredictionSettings(
            preprocessing=self.manifest.preprocessing, temperature=cal.temperature,
            referable_threshold=cal.referable_threshold,
            vision_threatening_threshold=cal.vision_threatening_threshold,
            grade_thresholds=cuts, tta=self.tta, device=str(self.device),
            bundle_key=self.bundle.key, cpu_int8=self.int8,
            vt_grade_by_probability=cal.vt_grade_by_probability,
            engine=engine or self.engine,
            dme_threshold=cal.dme_threshold if self.has_dme else None)

    def _result(self, item: PreparedImage, probs: np.ndarray | None, start: float,
                engine: str | None = None, p_dme: float | None = None) -> Prediction:
        m = self.manifest
        common = dict(quality=item.quality, model=m.name, version=m.version, field=item.pre.field,
                      settings=self.settings(engine))
        if probs is None:
            return Prediction(None, None, None, None, None, None, None, latency_ms=_ms(start),
                              decision=grading.ungradable(not_fundus=item.quality.not_fundus),
                              **common)
        d = grading.decide(probs, self.thresholds, quality_level=item.quality.level,
                           near_chance=self.near_chance, demo=m.demo, p_dme=p_dme)
        return Prediction(
            grade=d.grade, probs=tuple(float(p) for p in probs),
            p_referable=grading.p_referable(probs),
            p_vision_threatening=grading.p_vision_threatening(probs),
            referable=d.referable, vision_threatening=d.vision_threatening,
            confidence=d.confidence, latency_ms=_ms(start), decision=d, p_dme=p_dme, **common)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
