"""The result card: decision first (referable? vision-threatening? gradable?), then detail.

Ungradable is a result in its own right: "Ungradable - re-image or refer", never a grade.
"""

from __future__ import annotations

import json

import streamlit as st

from core.grading import DME_NOT_ASSESSED, GRADE_NAMES, Urgency
from core.predict import Prediction
from core.quality import QualityReport
from core.wording import RESULT_RECORD_NOTICE
from dashboard.components.probability_chart import probability_figure

_HEADLINE = {
    Urgency.VISION_THREATENING: ("error", ":material/emergency:",
                                 "Vision-threatening DR suggested - review and refer urgently"),
    Urgency.REFERABLE: ("error", ":material/priority_high:",
                        "Referable DR suggested - review for referral"),
    Urgency.UNGRADABLE: ("warning", ":material/visibility_off:", Urgency.UNGRADABLE.label),
    Urgency.MILD: ("success", ":material/check_circle:",
                   "Not referable (mild NPDR suggested)"),
    Urgency.NONE: ("success", ":material/check_circle:", "Not referable (no DR suggested)"),
}


def headline(prediction: Prediction) -> str:
    """The one-line decision a nurse reads first."""
    return _HEADLINE[prediction.urgency][2]


def quality_text(quality: QualityReport) -> str:
    reasons = f": {', '.join(quality.reasons)}" if quality.reasons else ""
    return f"{quality.level}{reasons}"


def _yes_no(flag: bool | None) -> str:
    return "not graded" if flag is None else ("YES" if flag else "no")


def decision_ui(prediction: Prediction) -> None:
    """Coloured headline, then referable / vision-threatening / gradable side by side."""
    kind, icon, text = _HEADLINE[prediction.urgency]
    getattr(st, kind)(f"**{text}**", icon=icon)
    s = prediction.settings
    c1, c2, c3 = st.columns(3)
    c1.metric("Referable DR", _yes_no(prediction.referable),
              help="P(grade >= 2) compared with the bundle's referable threshold.")
    c2.metric("Vision-threatening DR", _yes_no(prediction.vision_threatening),
              help="P(grade >= 3) compared with the bundle's vision-threatening threshold.")
    c3.metric("Gradable", "YES" if prediction.gradable else "NO",
              help="Image-quality gate (EyeQ levels good / usable / reject).")
    if prediction.gradable:
        c1.caption(f"p = {prediction.p_referable:.2f} (threshold {s.get('referable_threshold', 0):.3f})")
        c2.caption(f"p = {prediction.p_vision_threatening:.2f} "
                   f"(threshold {s.get('vision_threatening_threshold', 0):.3f})")
    c3.caption(f"Quality: {quality_text(prediction.quality)}")
    if not prediction.gradable:
        st.markdown("No grade is given for an ungradable photo. **Re-image, or refer for a "
                    "standard eye examination.**")


def grade_ui(prediction: Prediction) -> None:
    """Grade name and number, confidence, DME statement and the probability chart."""
    if not prediction.gradable:
        st.caption(DME_NOT_ASSESSED)
        return
    g = prediction.grade
    st.markdown(f"#### Suggested grade: {GRADE_NAMES[g]} (ICDR {g})")
    st.markdown(f"Confidence (probability of this grade): **{prediction.confidence:.0%}**  \n"
                f"{DME_NOT_ASSESSED}")
    st.plotly_chart(probability_figure(prediction.probs, g), width="stretch",
                    config={"displayModeBar": False})


def settings_rows(prediction: Prediction) -> dict[str, str]:
    """What this result records: model, version, preprocessing, thresholds, device, latency."""
    s = prediction.settings
    pre = s.get("preprocessing", {})
    return {
        "Model": prediction.model, "Version": prediction.version,
        "Bundle key": str(s.get("bundle_key", "")),
        "Preprocessing": json.dumps(pre, sort_keys=True),
        "Temperature": str(s.get("temperature")),
        "Referable threshold": str(s.get("referable_threshold")),
        "Vision-threatening threshold": str(s.get("vision_threatening_threshold")),
        "Grade decided by": ("argmax" if not s.get("grade_thresholds") else
                             f"cut points {s['grade_thresholds']} on the expected grade"),
        "Test-time augmentation": str(s.get("tta")), "Device": str(s.get("device")),
        "CPU int8 grading (DR_CPU_INT8)": str(s.get("cpu_int8", False)),
        "Latency (decode to result)": f"{prediction.latency_ms:.0f} ms",
    }


def settings_ui(prediction: Prediction) -> None:
    st.caption(f"Model **{prediction.model}** version **{prediction.version}**. "
               + RESULT_RECORD_NOTICE)
    with st.expander("Model, preprocessing and thresholds used"):
        st.table({"setting": list(settings_rows(prediction)),
                  "value": list(settings_rows(prediction).values())})
