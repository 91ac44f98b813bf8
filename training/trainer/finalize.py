"""Turn the best epoch into a bundle: calibration, operating points, metrics, card, plots."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.bundle import Bundle
from core.grading import DME_SCOPE, Thresholds, grade_band
from core.manifest import CalibrationSpec, Manifest, Provenance, WeightsSpec
from core.wording import (
    DEMO_NOTICE,
    RESEARCH_USE_NOTICE,
    RETFOUND_LICENSE_NOTICE,
    real_data_notice,
)
from training.common.metrics import (
    choose_referable_threshold,
    evaluate,
    expected_grade,
    metric_value,
    reliability_bins,
    tune_qwk_thresholds,
)
from training.common.provenance import config_hash, git_commit, utc_now
from training.trainer.calibration import apply_temperature, fit_temperature
from training.trainer.config import TrainConfig
from training.trainer.distill import distill_note
from training.trainer.tiers import TierSetup


def calibrate_and_evaluate(cfg: TrainConfig, logits: np.ndarray,
                           y: np.ndarray) -> tuple[CalibrationSpec, dict]:
    """Temperature on validation NLL; referable / vtDR thresholds at the sensitivity target."""
    temperature = fit_temperature(logits, y)
    probs = apply_temperature(logits, temperature)
    vt_by_p = cfg.optim.ordinal and cfg.optim.vt_grade_by_probability
    rule = fit_operating_rule(probs, y, cfg.optim.min_sensitivity, cfg.optim.min_sensitivity,
                              ordinal=cfg.optim.ordinal, vt_grade_by_probability=vt_by_p)
    ref_t, vt_t, grade_t = rule.referable, rule.vision_threatening, rule.grade_cuts
    metrics = evaluate(y, probs, referable_threshold=ref_t, vision_threatening_threshold=vt_t,
                       grade_thresholds=grade_t, vt_grade_by_probability=vt_by_p)
    metrics["reliability"] = reliability_bins(y, probs)
    metrics["temperature"] = temperature
    if grade_t is not None:
        metrics["ordinal_thresholds"] = list(grade_t)
    calibration = CalibrationSpec(temperature=float(temperature),
                                  referable_threshold=float(ref_t),
                                  vision_threatening_threshold=float(vt_t),
                                  grade_thresholds=grade_t, vt_grade_by_probability=vt_by_p,
                                  flip_tta=cfg.flip_tta)
    return calibration, metrics


def fit_operating_rule(probs: np.ndarray, y: np.ndarray, referable_sensitivity: float,
                       vt_sensitivity: float, *, ordinal: bool = True,
                       vt_grade_by_probability: bool = False) -> Thresholds:
    """Flags at their sensitivity targets, then (ordinal bundles) cut points tuned on the
    grades as served. The one fit training and training.evaluation.operating_rules both use."""
    ref_t = choose_referable_threshold(y, probs[:, 2:].sum(1),
                                       min_sensitivity=referable_sensitivity)
    vt_t = choose_referable_threshold(y, probs[:, 3:].sum(1), min_sensitivity=vt_sensitivity,
                                      min_grade=3)
    flags = Thresholds(float(ref_t), float(vt_t), vt_grade_by_probability=vt_grade_by_probability)
    return replace(flags, grade_cuts=served_cut_points(probs, y, flags) if ordinal else None)


def served_cut_points(probs: np.ndarray, y: np.ndarray,
                      flags: Thresholds) -> tuple[float, ...]:
    """Cut points on E[grade] tuned for kappa on the grades as served: first unconstrained,
    then inside each photo's flag band (core.grading.decide clips the grade into it; with
    flags.vt_grade_by_probability a vtDR photo's grade is its more probable of 3 and 4). Tuned
    without the bands, a low referable threshold leaves the 0/1 cut where no unreferred photo
    reaches it, and the bundle never serves mild NPDR."""
    scores = expected_grade(probs)
    free = tune_qwk_thresholds(scores, y)
    bands = [grade_band(float(p[2:].sum()), float(p[3:].sum()), flags) for p in probs]
    if flags.vt_grade_by_probability:  # a vtDR photo's grade is fixed whatever the cut points
        bands = [range(g, g + 1) if b[0] >= 3 else b for b, g in zip(
            bands, (3 if p[3] >= p[4] else 4 for p in probs), strict=True)]
    lowest = np.array([b[0] for b in bands])
    highest = np.array([b[-1] for b in bands])
    return tuple(float(t) for t in tune_qwk_thresholds(scores, y, init=free,
                                                       bands=(lowest, highest)))


def write_bundle(cfg: TrainConfig, setup: TierSetup, run_dir: Path, calibration: CalibrationSpec,
                 metrics: dict, data_summary: dict) -> Bundle:
    name = cfg.bundle_name or cfg.run_name
    out = Path(cfg.bundle_dir) if cfg.bundle_dir else run_dir / "bundle"
    resolved = cfg.to_dict()
    distilled = distill_note(cfg.optim)
    training_data = _data_line(cfg, data_summary)
    if distilled:
        training_data += f"; soft targets distilled from {distilled}"
    manifest = Manifest(
        name=name, version=cfg.version, tier=setup.tier, created=utc_now(),
        git_commit=git_commit(), architecture=setup.architecture,
        preprocessing=cfg.preprocessing, explanation=setup.explanation,
        weights=WeightsSpec("weights.safetensors", ""),
        provenance=Provenance(training_data=training_data,
                              config_hash=config_hash(resolved), run_dir=str(run_dir),
                              command=" ".join(["python -m"] + _argv())),
        demo=cfg.demo, calibration=calibration, evaluation=_jsonable(metrics),
        base_bundle=setup.base_bundle.path.name if setup.base_bundle else None,
        license=setup.license,
        outputs=("icdr_grade", "dme") if cfg.model.dme_head else ("icdr_grade",))
    card = model_card(manifest, metrics, data_summary, distilled_from=distilled,
                      started_from=start_note(cfg))
    bundle = setup.export(out, manifest, card)
    if not cfg.onnx:
        return bundle
    from training.common.onnx_export import attach_or_warn

    return attach_or_warn(bundle)  # the CPU grades with it (core.onnx_engine)


def start_note(cfg: TrainConfig) -> str:
    """Where the weights started, as the card names it: a checkpoint or bundle (with the
    bundle's own provenance, e.g. how its MAE encoder was pretrained), ImageNet, or nothing;
    and whether the head started as a linear probe (LP-FT)."""
    probe = ("; the head started as a linear probe of those features on the training photos "
             "(LP-FT)") if cfg.optim.head_init == "linear_probe" else ""
    return _weights_start(cfg) + probe


def _weights_start(cfg: TrainConfig) -> str:
    m = cfg.model
    if m.checkpoint_path:
        path = Path(m.checkpoint_path)
        manifest = path / "manifest.json"
        if manifest.is_file():
            origin = json.loads(manifest.read_text(encoding="utf-8")).get("provenance") or {}
            made = origin.get("training_data")
            return f"bundle `{path.name}` ({path})" + (f": {made}" if made else "")
        return f"checkpoint `{path.name}`"
    if m.weights_path:
        return f"local weights `{Path(m.weights_path).name}`"
    if m.pretrained:
        return f"ImageNet weights of `{m.name}` (installed weight package, offline)"
    return "random initialisation (no pretrained weights)"


def model_card(manifest: Manifest, metrics: dict, data_summary: dict, *,
               distilled_from: str | None = None, started_from: str | None = None) -> str:
    """distilled_from: the teacher whose soft targets trained the model (distill_note);
    started_from: where its weights started (start_note)."""
    notice = DEMO_NOTICE if manifest.demo else real_data_notice(manifest.provenance.training_data)
    lines = [
        f"# {manifest.name} (version {manifest.version})", "",
        f"**{notice}**", "",
        f"- Tier: `{manifest.tier}`; architecture `{manifest.architecture.builder}` "
        f"{json.dumps(manifest.architecture.kwargs, sort_keys=True)}",
        f"- Base bundle: `{manifest.base_bundle}`" if manifest.base_bundle else "",
        f"- Started from {started_from}" if started_from else "",
        f"- Distilled from teacher {distilled_from}: its soft targets on the training photos"
        if distilled_from else "- Knowledge distillation: none (hard labels only)",
        f"- Training data: {manifest.provenance.training_data}",
        f"- Input {manifest.preprocessing.input_size} px, field crop "
        f"{'on' if manifest.preprocessing.crop_to_field else 'off'}, Ben Graham "
        f"{'on' if manifest.preprocessing.ben_graham else 'off'}"
        + ("; served with flip test-time averaging (the photo and its mirror image; every "
           "figure below was measured so)" if manifest.calibration.flip_tta else ""),
        f"- Created {manifest.created}, commit `{manifest.git_commit}`", "",
        *metrics_table(metrics), "",
        VT_GRADE_CARD_LINE if manifest.calibration.vt_grade_by_probability else "",
        dme_card_lines(manifest, metrics.get("dme")),
        RETFOUND_LICENSE_NOTICE if manifest.license else "", "", RESEARCH_USE_NOTICE, "",
    ]
    return "\n".join(line for line in lines if line is not None)


def dme_card_lines(manifest: Manifest, dme: dict | None) -> str:
    """What the DME output is, how its threshold was fitted, and its split figures; for a
    bundle without one, that DME is not assessed."""
    if "dme" not in manifest.outputs or not dme:
        return "DME (macular oedema): not assessed; this model has no DME output.\n"
    cal = manifest.calibration
    lines = ["## DME output", "",
             f"A second head on the same backbone. Positive class: {dme['positive_class']}. "
             f"{DME_SCOPE}. Temperature {cal.dme_temperature:.3f} and threshold "
             f"{cal.dme_threshold:.3f} (sensitivity first) fitted on the calibration split's "
             "DME-labelled photos.", "",
             "| split | photos (DME) | DME AUROC | sensitivity | specificity |",
             "|---|---|---|---|---|"]
    for split in ("calibration", "selection", "test"):
        f = dme.get(split)
        if isinstance(f, dict):
            lines.append(f"| {split} | {f['photos']} ({f['positives']}) | {_f(f['auroc'])} | "
                         f"{_f(f['sensitivity'])} | {_f(f['specificity'])} |")
    return "\n".join(lines) + "\n"


VT_GRADE_CARD_LINE = (
    "Grade inside the vision-threatening band: severe NPDR or PDR, whichever is more probable; "
    "the 3/4 cut point on the expected grade is not used there (it rests on the few grade-3/4 "
    "photos of the calibration split). `python -m training.evaluation.operating_rules` compares the "
    "rules out of fold.\n")


# (label, path into training.common.metrics.evaluate's dict, is it a threshold-dependent figure)
CARD_ROWS = (
    ("quadratic-weighted kappa", ("kappa_quadratic",)),
    ("Cohen's kappa (unweighted)", ("kappa",)),
    ("accuracy", ("accuracy",)),
    ("macro AUROC", ("macro_auroc",)),
    ("referable AUROC", ("referable", "auroc")),
    ("referable sensitivity", ("referable", "sensitivity")),
    ("referable specificity", ("referable", "specificity")),
    ("vision-threatening sensitivity", ("vision_threatening", "sensitivity")),
    ("vision-threatening specificity", ("vision_threatening", "specificity")),
    ("ECE after temperature scaling", ("ece",)),
)


def metrics_table(metrics: dict) -> list[str]:
    """One column per split the figures come from, each named, with its photo count."""
    columns = [(metrics.get("split", "selection"), metrics)]
    columns += [(name, metrics[name]) for name in ("selection", "test")
                if isinstance(metrics.get(name), dict)]
    head = " | ".join(f"{name} ({col['n']} photos)" for name, col in columns)
    lines = ["## Metrics of the best epoch, by split", "",
             f"| metric | {head} |", "|---|" + "---|" * len(columns)]
    for label, path in CARD_ROWS:
        lines.append(f"| {label} | " + " | ".join(_f(metric_value(col, path)) for _, col in columns)
                     + " |")
    ref, vt = metrics["referable"], metrics["vision_threatening"]
    lines += ["", f"Operating thresholds (fitted on the {columns[0][0]} split): referable "
              f"{ref['threshold']:.3f}, vision-threatening {vt['threshold']:.3f}; temperature "
              f"{metrics['temperature']:.3f}.", ""]
    notes = metrics.get("split_notes", {})
    lines += [f"- {name}: {notes[name]}" for name, _ in columns if name in notes]
    lines += ["", "Every split comes from the training data's own source; none is evidence of "
              "performance on your camera or population."]
    return lines


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


DATA_SOURCES = {
    "synthetic": "synthetic fundus images (core.synthetic)",
    "eyepacs": "EyePACS photos (Kaggle Diabetic Retinopathy Detection 2015, for non-commercial "
               "research and education under Kaggle's competition terms)",
    "aptos": "APTOS-2019 photos",
    "messidor2": "Messidor-2 photos (ADCIS / LaTIM, research use under the Messidor licence, no "
                 "redistribution; adjudicated grades of Krause et al., Ophthalmology 2018)",
    "idrid": "IDRiD photos (Porwal et al., Data 2018, CC BY 4.0)",
}
SET_NAMES = {"eyepacs": "EyePACS", "messidor2": "Messidor-2", "idrid": "IDRiD", "aptos": "APTOS"}
GROUPED_BY = {"eyepacs": "patient", "messidor2": "examination", "idrid": "image"}


def _data_line(cfg: TrainConfig, summary: dict) -> str:
    """What the card and every page name as the training data (the part before the first
    colon is the short form: core.wording.real_data_notice)."""
    parts = [f"{summary.get('train')} train", f"{summary.get('val')} selection"]
    if cfg.data.sources:
        parts += [f"{summary['calibration']} calibration"] if summary.get("calibration") else []
        return _sources_line(cfg, summary, " / ".join(parts))
    parts += [f"{summary[k]} {k}" for k in ("calibration", "test") if summary.get(k)]
    kind = DATA_SOURCES.get(cfg.data.preset, f"preset {cfg.data.preset}")
    return (f"{summary.get('used')} {kind}: {' / '.join(parts)}, split by patient; "
            f"labels {summary.get('csv')}")


def _sources_line(cfg: TrainConfig, summary: dict, splits: str) -> str:
    """The short form counts the photos the model was developed on (train, selection,
    calibration); a held-out test split or source is named after it, never counted in it."""
    per = summary.get("sources") or {}
    held_source = cfg.data.hold_out_source
    sources = [(s.name or s.preset, s.preset) for s in cfg.data.sources]
    used = [(n, p) for n, p in sources if n != held_source]
    developed = int(summary.get("used") or 0) - int(summary.get("test") or 0)
    short = ", ".join(SET_NAMES.get(p, n) for n, p in used)
    groups = ", ".join(f"{GROUPED_BY.get(p, 'patient')} ({SET_NAMES.get(p, n)})" for n, p in used)
    each = "; ".join(f"{(per.get(n) or {}).get('used', '?')} {DATA_SOURCES.get(p, n)}"
                     for n, p in sources)
    test = (f"every photo of {held_source} held out as the test set" if held_source else
            f"a further {summary.get('test')} photos held out as the test set"
            if summary.get("test") else "no test set")
    return (f"{developed:,} real photos from {len(used)} sets ({short}): {splits}, grouped by "
            f"{groups}, stratified by set and grade; {test}. The sets: {each}")


def _argv() -> list[str]:
    """The command as typed: the module `-m` ran (training.evaluation.crossval, which trains
    through here too), else the script's last two path parts."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        prog = spec.name.removesuffix(".__main__")
    else:
        prog = ".".join(Path(sys.argv[0]).with_suffix("").parts[-2:]) if sys.argv else ""
    return [prog] + sys.argv[1:]


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def load_best(setup: TierSetup, run_dir: Path) -> None:
    from safetensors.torch import load_file

    best = run_dir / "best.safetensors"
    if best.is_file():
        setup.model.load_state_dict(load_file(str(best)))
