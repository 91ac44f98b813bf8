"""Glue between pages and core: run a bundle on a photo once per session and keep the result.

Every core error (core.errors.DRError) becomes a message string on the result, never a
traceback; the page shows it with st.error and carries on with the next photo.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.bundle import Bundle
from core.errors import DRError
from core.explain import Explanation
from core.images import decode_image
from core.predict import Prediction, Predictor, PreparedImage
from core.preprocessing import decode_min_side
from dashboard.components.bundles import predictor_for
from dashboard.components.upload import PhotoInput
from dashboard.state import remembered


@dataclass(frozen=True)
class Analysis:
    """One photo through one bundle: the prepared photo and prediction, or the error message."""

    photo: PhotoInput
    bundle: Bundle
    prepared: PreparedImage | None = None
    prediction: Prediction | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def load_predictor(bundle: Bundle) -> tuple[Predictor | None, str | None]:
    """The cached predictor, or the reason it cannot be loaded (bad weights, encoder-only...)."""
    try:
        return predictor_for(bundle), None
    except DRError as exc:
        return None, str(exc)
    except (OSError, RuntimeError, ValueError) as exc:  # unreadable file, torch refusing it
        return None, (f"Model bundle {bundle.name!r} could not be loaded ({exc}). Re-copy or "
                      "re-export the bundle, or pick another one.")


def run_analysis(predictor: Predictor, photo: PhotoInput) -> Analysis:
    """Decode with the photo's own name (so errors name the file), gate quality, grade."""
    start = time.perf_counter()
    try:
        spec = predictor.manifest.preprocessing
        rgb = decode_image(photo.data, min_side=decode_min_side(spec), name=photo.name)
        prepared = predictor.prepare(rgb)
        prediction = predictor.predict_prepared([prepared], started=[start])[0]
    except (DRError, ValueError) as exc:
        return Analysis(photo, predictor.bundle, error=str(exc))
    return Analysis(photo, predictor.bundle, prepared, prediction)


def analysis_for(bundle: Bundle, photo: PhotoInput) -> Analysis:
    """Memoised per session by (photo hash, bundle key): reruns never recompute."""
    def compute() -> Analysis:
        predictor, error = load_predictor(bundle)
        if predictor is None:
            return Analysis(photo, bundle, error=error)
        return run_analysis(predictor, photo)

    return remembered(("analysis", photo.fingerprint, bundle.key), compute)


def explanation_for(analysis: Analysis, method: str | None = None,
                    target: int | str = "predicted", layer: str | None = None
                    ) -> Explanation | str:
    """Heatmap (memoised by photo, bundle, method, target, layer), or the error message."""
    bundle = analysis.bundle
    method = method or bundle.manifest.explanation.method

    def compute() -> Explanation | str:
        if analysis.prepared is None:
            return analysis.error or "No photo to explain."
        predictor, error = load_predictor(bundle)
        if predictor is None:
            return error or "Model unavailable."
        try:
            return predictor.explain(analysis.prepared, method=method, target=target, layer=layer)
        except (DRError, ValueError, RuntimeError) as exc:  # a heatmap never breaks the page
            return f"Heatmap unavailable ({method}): {exc}"

    key = ("explain", analysis.photo.fingerprint, bundle.key, method, str(target), layer)
    return remembered(key, compute)
