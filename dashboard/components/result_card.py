"""The result card: decision first (referable? vision-threatening? gradable?), then detail.

Ungradable is a result in its own right: "Ungradable - re-image or refer", never a grade.
"""

from __future__ import annotations

import dataclasses
import json

import streamlit as st

from core.grading import (
    DME_SCOPE,
    GRADE_NAMES,
    HEADLINES,
    NOT_FUNDUS_HEADLINE,
    VT_GRADE_BY_PROBABILITY_WORDS,
    Urgency,
    dme_cell,
    dme_statement,
    format_against,
)
from core.predict import Prediction
from core.quality import QualityReport
from core.wording import RESULT_RECORD_NOTICE
from dashboard.components.probability_chart import probability_figure

_STYLE = {
    Urgency.VISION_THREATENING: ("error", ":material/emergency:"),
    Urgency.REFERABLE: ("error", ":material/priority_high:"),
    Urgency.UNGRADABLE: ("warning", ":material/visibility_off:"),
    Urgency.MILD: ("success", ":material/check_circle:"),
    Urgency.NONE: ("success", ":material/check_circle:"),
}
NEEDS_REVIEW = "Needs review - this answer is fragile"


def headline(prediction: Prediction) -> str:
    """The one-line decision a nurse reads first (core.grading.Decision.headline)."""
    if prediction.decision is not None:
        return prediction.decision.headline
    return HEADLINES[prediction.urgency]


def card_fields(prediction: Prediction) -> dict[str, str]:
    """What the card shows, as text: every value comes from the prediction's one Decision."""
    return {"headline": headline(prediction),
            "grade": ("not graded" if not prediction.gradable else
                      f"{prediction.grade} - {GRADE_NAMES[prediction.grade]}"),
            "referable": _yes_no(prediction.referable),
            "vision_threatening": _yes_no(prediction.vision_threatening),
            "dme": dme_flag(prediction),
            "dme_statement": dme_line(prediction),
            "urgency": prediction.urgency.label,
            "review": "; ".join(prediction.review_reasons)}


def _dme_threshold(prediction: Prediction) -> float | None:
    s = prediction.settings
    return None if s is None else s.dme_threshold


def dme_flag(prediction: Prediction) -> str:
    """The DME metric beside referable / vision-threatening: YES / no / not assessed (no DME
    output) / not graded (ungradable photo)."""
    word = dme_cell(prediction.dme, _dme_threshold(prediction) is not None)
    return {"yes": "YES"}.get(word, word)


def dme_line(prediction: Prediction) -> str:
    """The card's DME sentence (core.grading.dme_statement), with p(DME) against its threshold."""
    return dme_statement(prediction.p_dme, prediction.dme, _dme_threshold(prediction))


def referable_caption(prediction: Prediction, threshold: float) -> str:
    """p(grade >= 2) against its threshold; where DME alone made the photo referable, says so,
    or a "YES" above "p = 0.08 (threshold 0.50)" reads as a contradiction."""
    text = "p = {} (threshold {})".format(*format_against(prediction.p_referable, threshold))
    decision = prediction.decision
    if decision is not None and decision.referable_for_dme_only:
        text += "; referable for macular oedema (DME), not for the grade"
    return text


def quality_text(quality: QualityReport) -> str:
    reasons = f": {', '.join(quality.reasons)}" if quality.reasons else ""
    return f"{quality.level}{reasons}"


def _yes_no(flag: bool | None) -> str:
    return "not graded" if flag is None else ("YES" if flag else "no")


def review_ui(prediction: Prediction) -> None:
    """Why a person must look before anyone acts on this result (never a green tick alone)."""
    if prediction.review_reasons:
        st.warning(f"**{NEEDS_REVIEW}**  \n" + "  \n".join(
            f"- {r}" for r in prediction.review_reasons), icon=":material/rate_review:")


def decision_ui(prediction: Prediction) -> None:
    """Coloured headline, review reasons, then referable / vision-threatening / gradable."""
    if prediction.not_fundus:
        st.error(f"**{NOT_FUNDUS_HEADLINE}**", icon=":material/image_not_supported:")
        st.markdown("This picture does not look like a colour fundus photograph "
                    f"({quality_text(prediction.quality)}). No grade is given. Upload the "
                    "right photo; if it is a fundus photo, re-image it.")
        return
    kind, icon = _STYLE[prediction.urgency]
    if kind == "success" and prediction.review_reasons:
        kind = "info"  # a fragile negative is not reassurance: no green
    getattr(st, kind)(f"**{headline(prediction)}**", icon=icon)
    review_ui(prediction)
    s = prediction.settings
    c1, c2, c4, c3 = st.columns(4)
    c1.metric("Referable DR", _yes_no(prediction.referable),
              help="P(grade >= 2) at the bundle's referable threshold (or vision-threatening, "
                   "or macular oedema where the bundle has a DME output).")
    c2.metric("Vision-threatening DR", _yes_no(prediction.vision_threatening),
              help="P(grade >= 3) compared with the bundle's vision-threatening threshold.")
    c4.metric("Macular oedema (DME)", dme_flag(prediction),
              help="The bundle's DME output at its own threshold: DME makes a photo referable "
                   f"whatever its grade. {DME_SCOPE}.")
    c3.metric("Gradable", "YES" if prediction.gradable else "NO",
              help="Image-quality gate (EyeQ levels good / usable / reject).")
    if prediction.gradable and s is not None:  # typed: a renamed field fails, never shows 0
        c1.caption(referable_caption(prediction, s.referable_threshold))
        c2.caption("p = {} (threshold {})".format(
            *format_against(prediction.p_vision_threatening, s.vision_threatening_threshold)))
        if prediction.p_dme is not None and s.dme_threshold is not None:
            c4.caption("p = {} (threshold {})".format(
                *format_against(prediction.p_dme, s.dme_threshold)))
    c3.caption(f"Quality: {quality_text(prediction.quality)}")
    if not prediction.gradable:
        st.markdown("No grade is given for an ungradable photo. **Re-image, or refer for a "
                    "standard eye examination.**")


def grade_ui(prediction: Prediction, *, key: str = "") -> None:
    """Grade name and number, confidence, DME statement and the probability chart."""
    if not prediction.gradable:
        st.caption(dme_line(prediction))
        return
    g = prediction.grade
    st.markdown(f"#### Suggested grade: {GRADE_NAMES[g]} (ICDR {g})")
    st.markdown(f"Probability of this grade: **{prediction.confidence:.0%}**  \n"
                + (f"**{dme_line(prediction)}**" if prediction.dme else dme_line(prediction)))
    top = max(range(len(prediction.probs)), key=lambda k: prediction.probs[k])
    if top != g:
        st.caption(band_note(prediction, top))
    st.plotly_chart(probability_figure(prediction.probs, g), width="stretch",
                    config={"displayModeBar": False}, key=f"probs-{key}" if key else None)


def band_note(prediction: Prediction, top: int) -> str:
    """Why the grade is not the single most probable one (the rule is core.grading.decide)."""
    ref, vt = prediction.referable, prediction.vision_threatening
    band = [g for g in range(5) if (g >= 2) == ref and (g >= 3) == vt]
    said = f"The single most probable grade is {top} ({prediction.probs[top]:.0%}). "
    if top not in band:
        names = ("grades 3-4 (vision-threatening)" if vt else
                 "grade 2 (referable, not vision-threatening)" if ref else
                 "grades 0-1 (not referable)")
        return (said + "At this model's operating thresholds the referable / vision-threatening "
                f"probabilities put the result in {names}; the grade shown is the one "
                "the model's rule picks inside that band.")
    expected = sum(g * p for g, p in enumerate(prediction.probs))
    return (said + "This model grades by cut points on the expected grade (here "
            f"{expected:.2f}), tuned on held-out photos, which give grade "
            f"{prediction.grade}.")


def settings_rows(prediction: Prediction) -> dict[str, str]:
    """What this result records: model, version, preprocessing, thresholds, device, latency."""
    rows = {"Model": prediction.model, "Version": prediction.version}
    s = prediction.settings
    if s is None:
        return {**rows, "Latency (decode to result)": f"{prediction.latency_ms:.0f} ms"}
    return {
        **rows, "Bundle key": s.bundle_key,
        "Preprocessing": json.dumps(dataclasses.asdict(s.preprocessing), sort_keys=True),
        "Temperature": str(s.temperature),
        "Referable threshold": str(s.referable_threshold),
        "Vision-threatening threshold": str(s.vision_threatening_threshold),
        "DME threshold": ("no DME output (not assessed)" if s.dme_threshold is None
                          else str(s.dme_threshold)),
        "Grade decided by": DECIDED_BY + ("the most probable grade in that band" if not
                                          s.grade_thresholds else
                                          "cut points " + _cuts(s.grade_thresholds)
                                          + " on the expected grade, kept inside that band"
                                          + (VT_GRADE_BY_PROBABILITY_WORDS
                                             if s.vt_grade_by_probability else "")),
        "Test-time augmentation": str(s.tta), "Device": s.device,
        "CPU int8 grading (DR_CPU_INT8)": str(s.cpu_int8),
        "Graded with (DR_CPU_ONNX)": ENGINE_WORDS.get(s.engine, s.engine),
        "Latency (decode to result)": f"{prediction.latency_ms:.0f} ms",
    }


DECIDED_BY = "flags at the operating thresholds, then "
ENGINE_WORDS = {"onnxruntime": "ONNX Runtime (the bundle's verified ONNX graph)",
                "pytorch": "PyTorch"}


def _cuts(cuts) -> str:
    return "[" + ", ".join(f"{float(c):.3f}" for c in cuts) + "]"


def settings_ui(prediction: Prediction) -> None:
    st.caption(f"Model **{prediction.model}** version **{prediction.version}**. "
               + RESULT_RECORD_NOTICE)
    with st.expander("Model, preprocessing and thresholds used"):
        st.table({"setting": list(settings_rows(prediction)),
                  "value": list(settings_rows(prediction).values())})
