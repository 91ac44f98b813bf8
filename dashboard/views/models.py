"""Models page: every installed bundle's card, validation metrics, plots and training curves."""

from __future__ import annotations

import streamlit as st

from core.bundle import MODEL_CARD_FILE, Bundle, models_dir
from core.grading import near_chance
from dashboard.components.bundles import TIER_NAMES, graders, installed, is_grader
from dashboard.components.model_card import (
    confusion_figure,
    cross_validation_rows,
    grade_rule,
    history_figure,
    metrics_rows,
    read_history,
    reliability_figure,
    split_of,
)
from dashboard.components.notice import demo_notice_ui, licence_notice_ui, research_notice_ui

# how a held-out table was measured, for bundles attached before the manifest said so
HELD_OUT_WHAT = ("photos used for neither training, epoch choice nor calibration; quality gate on; "
                 "95% bootstrap interval")

research_notice_ui()
st.title("Installed models")
found = installed()
st.caption(f"Bundles are read from `{models_dir()}` (set DR_MODELS_DIR to change).")
if not found.bundles:
    st.info("No model bundles are installed yet. See models/README.md to train or import one.")
demo_notice_ui(found.bundles)
licence_notice_ui(found.bundles)
_CHART = {"displayModeBar": False}


def _facts(bundle: Bundle) -> None:
    m = bundle.manifest
    arch = m.architecture
    st.table({"": ["Tier", "Architecture", "Input", "Outputs", "Demo model", "Licence",
                   "Training data", "Base bundle", "Thresholds (referable / VT)",
                   "Grade rule", "Temperature"],
              "value": [TIER_NAMES.get(m.tier, m.tier),
                        f"{arch.builder} {arch.kwargs.get('model_name', '')}".strip(),
                        f"{m.preprocessing.input_size} px, Ben Graham "
                        f"{'on' if m.preprocessing.ben_graham else 'off'}",
                        ", ".join(m.outputs) + ("" if is_grader(bundle) else
                                                " (encoder only: cannot grade)"),
                        "YES - synthetic training images" if m.demo else "no",
                        m.license or "not stated", m.provenance.training_data,
                        m.base_bundle or "none",
                        f"{m.calibration.referable_threshold:.3f} / "
                        f"{m.calibration.vision_threatening_threshold:.3f}"
                        + (f"; DME {m.calibration.dme_threshold:.3f}"
                           if m.calibration.dme_threshold is not None else ""),
                        grade_rule(m.calibration.grade_thresholds,
                                   m.calibration.vt_grade_by_probability),
                        f"{m.calibration.temperature:.3f}"]}, hide_header=True)
    if is_grader(bundle) and near_chance(m.evaluation):
        st.warning("Near chance on its own validation data (or no validation metrics): every "
                   "result of this model is flagged for review, and it never counts towards "
                   "agreement on the Compare page.", icon=":material/balance:")


def _evaluation(bundle: Bundle) -> None:
    ev = bundle.manifest.evaluation
    if not ev:
        st.caption("No validation metrics recorded in this bundle.")
        return
    cv = cross_validation_rows(ev)
    if cv:
        st.markdown("**Headline: patient-disjoint cross-validation of this recipe** (photos used "
                    "for neither training, epoch choice nor calibration; 95% bootstrap interval)")
        st.table(cv, hide_index=True)
    held_out = cross_validation_rows(ev, "held_out", "dataset")
    if held_out:
        what = (ev.get("held_out") or {}).get("what") or HELD_OUT_WHAT
        st.markdown(f"**Held-out evaluation** ({what})")
        st.table(held_out, hide_index=True)
    st.markdown(f"**Metrics on the {split_of(ev)}**" + (" (synthetic images)"
                                                        if bundle.manifest.demo else ""))
    st.table(metrics_rows(ev), hide_index=True)
    cols = st.columns(2)
    if ev.get("confusion_matrix"):
        cols[0].plotly_chart(confusion_figure(ev["confusion_matrix"]), config=_CHART,
                             key=f"cm-{bundle.key}")
    if isinstance(ev.get("reliability"), dict):
        cols[1].plotly_chart(reliability_figure(ev["reliability"]), config=_CHART,
                             key=f"rel-{bundle.key}")


def _bundle(bundle: Bundle) -> None:
    m = bundle.manifest
    with st.container(border=True):
        st.subheader(f"{m.name} {m.version} - {TIER_NAMES.get(m.tier, m.tier)}")
        if m.demo:
            st.badge("DEMO MODEL: trained on synthetic images", color="red",
                     icon=":material/warning:")
        _facts(bundle)
        validation, curves, card_tab = st.tabs(["Validation", "Training curves", "Model card"])
        with validation:
            _evaluation(bundle)
        with curves:
            history = read_history(m.provenance.run_dir)
            if history:
                st.plotly_chart(history_figure(history), config=_CHART, key=f"hist-{bundle.key}")
            else:
                where = f"`{m.provenance.run_dir}`" if m.provenance.run_dir else "not recorded"
                st.caption(f"No training history here (run folder {where}).")
        with card_tab:
            card = bundle.path / MODEL_CARD_FILE
            st.markdown(card.read_text(encoding="utf-8") if card.is_file() else "_No model card._")


# the default grader first, as the Grade page offers them; encoders after the graders
for item in graders(found) + [b for b in found.bundles if not is_grader(b)]:
    _bundle(item)
if found.problems:
    st.subheader("Bundles that could not be loaded")
for folder, problem in found.problems:
    st.error(f"Could not load `{folder.name}`: {problem}")
