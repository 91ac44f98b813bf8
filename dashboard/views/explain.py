"""Explain page: several heatmap methods side by side for one photo, with their strength."""

from __future__ import annotations

import streamlit as st

from core.explain import CLASS_AGNOSTIC
from core.grading import GRADE_NAMES
from dashboard.components.analysis import analysis_for, explanation_for, load_predictor
from dashboard.components.bundles import bundle_selector_ui, explain_methods, graders, installed
from dashboard.components.heatmap import (
    DME_TARGET_LABEL,
    displayed_target,
    heatmap_caption,
    opacity_ui,
    overlay_image,
    scaled_heatmap,
    show_off_field_note,
    target_caption,
)
from dashboard.components.notice import demo_notice_ui, licence_notice_ui, research_notice_ui
from dashboard.components.result_card import headline
from dashboard.components.upload import photo_inputs_ui

TARGETS = ("the displayed grade", "another grade (not the displayed one)",
           "referable (grades 2-4)", DME_TARGET_LABEL)

research_notice_ui()
st.title("Explain a result")
st.caption("Compare how different explanation methods highlight the same photo. "
           + heatmap_caption())
bundles = graders(installed())
if not bundles:
    st.info("No grading model is installed. See models/README.md.")
    st.stop()
bundle = bundle_selector_ui(bundles, key="explain-bundle")
demo_notice_ui([bundle])
licence_notice_ui([bundle])
predictor, load_error = load_predictor(bundle)
if predictor is None:
    st.error(load_error)
    st.stop()
photos = photo_inputs_ui(key="explain", multiple=False)
methods_ok = explain_methods(predictor)
# beside the bundle's method, for ViTs only: attention rollout, whose peak lands on a lesion 2x
# as often as a random point's on synthetic referable photos, where the demo ViTs' Grad-CAM
# family scores below chance. No CNN second: HiResCAM, the best second for demo-baseline (69%),
# scores 2% on eyepacs-lite0, the default model (benchmarks/README.md, explain_quality.py)
second = ("attention_rollout",) if bundle.manifest.explanation.arch == "vit" else ()
default = [m for m in (bundle.manifest.explanation.method, *second) if m in methods_ok]
c1, c2, c3 = st.columns([3, 2, 2])
methods = c1.multiselect("Methods", methods_ok, default=list(dict.fromkeys(default)),
                         key="explain-methods")
# the DME output only where the bundle has one (Predictor.has_dme)
target_kind = c2.radio("Explain", TARGETS if predictor.has_dme else TARGETS[:3],
                       key="explain-target")
# shown only when it is used: a greyed-out "0 No DR" beside a grade-3 card reads as a contradiction
chosen = (c2.selectbox("Grade", range(5), format_func=lambda g: f"{g} {GRADE_NAMES[g]}",
                       key="explain-grade") if target_kind == TARGETS[1] else None)
with c3:
    alpha = opacity_ui(key="explain-opacity")
    common = st.checkbox("Common scale across maps", key="explain-common",
                         help="Scale every map by its raw peak, so a weak map looks weak. Peaks "
                              "of different methods are in different units: compare with care.")

if not photos:
    st.info("Upload a photo or pick a synthetic sample.")
    st.stop()
analysis = analysis_for(bundle, photos[-1])
if analysis.error:
    st.error(analysis.error)
    st.stop()
pred = analysis.prediction
grade = f" (suggested grade {pred.grade} {GRADE_NAMES[pred.grade]})" if pred.gradable else ""
st.markdown(f"**{analysis.photo.name}**: {headline(pred)}{grade}")
if not pred.gradable:
    st.warning("The photo is ungradable, so there is no grade to explain. Re-image or refer.")
    st.stop()
if not methods:
    st.info("Choose at least one method.")
    st.stop()

target: int | str = {TARGETS[0]: displayed_target(pred.grade), TARGETS[1]: int(chosen or 0),
                     TARGETS[2]: "referable", TARGETS[3]: "dme"}[target_kind or TARGETS[0]]
with st.spinner("Computing heatmaps..."):
    results = {m: explanation_for(analysis, m, target) for m in methods}
maps = {m: e for m, e in results.items() if not isinstance(e, str)}
peak = max((e.raw_max for e in maps.values()), default=0.0) if common else None

per_row = 3
cells = [("Photo (un-annotated)", None)] + list(results.items())
for lo in range(0, len(cells), per_row):
    cols = st.columns(per_row)
    for col, (name, exp) in zip(cols, cells[lo:lo + per_row], strict=False):
        with col:
            if exp is None:
                st.markdown(f"**{name}**")
                st.image(analysis.prepared.pre.cropped, width="stretch")
            elif isinstance(exp, str):
                st.error(exp)
            else:
                st.markdown(f"**{exp.method}**")
                st.image(overlay_image(analysis.prepared.pre.cropped,
                                       scaled_heatmap(exp, peak), alpha), width="stretch")
                rel = exp.raw_max / peak if peak else None
                st.caption(f"{target_caption(exp, pred.grade)} - layer `{exp.layer}` - raw peak "
                           "strength "
                           f"{exp.raw_max:.3g}"
                           + (f" ({rel:.0%} of the strongest)" if rel is not None else ""))
                if rel is not None:
                    st.progress(min(1.0, rel))
                show_off_field_note(exp.heatmap, analysis.prepared.pre.cropped)
agnostic = [m for m in maps if m in CLASS_AGNOSTIC]
if agnostic:
    st.caption(f"{', '.join(agnostic)}: the same map whatever the target. It shows what dominates "
               "the model's features (often the disc or the field edge), not the evidence for "
               "this grade.")
st.caption(heatmap_caption())
