"""Patient-disjoint k-fold cross-validation of a training recipe, with bootstrap intervals.

    python -m training.crossval --config training/configs/eyepacs_lite0.yaml \
        --compare models/demo-baseline --final

Each fold is an ordinary training run with `data.cv_fold=k` (runs/<run_name>-cv/fold<k>/): the
fold's patients are its test set, used for neither training, epoch choice nor calibration. The
out-of-fold predictions, each decided by its own fold's calibrated operating rule through
core.grading.decide (as the dashboard decides), give one table: referable AUROC, quadratic-
weighted kappa, sensitivity and specificity, each with a 95% interval from a bootstrap over
patients (both eyes of a patient are resampled together). `--compare` evaluates existing
bundles on the same photos; `--final` then trains the recipe on all photos and writes the
cross-validation table into that bundle's manifest and model card, the headline a user sees.
A finished fold (its test_predictions.csv beside the same config.yaml, `version` aside) is not re-run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.bundle import finalize_bundle, load_bundle
from core.errors import ConfigError, DRError
from core.grading import Thresholds, decide
from training.config import TrainConfig, load_config
from training.metrics import binary_auroc, cohen_kappa

BOOTSTRAP_REPS = 2000


@dataclass
class Outcomes:
    """Per photo: truth, the decided grade and referable flag, and the score behind it."""

    ids: list[str]
    patients: list[str]
    grade: np.ndarray
    decided: np.ndarray
    referable_call: np.ndarray
    p_referable: np.ndarray
    # truth of "referable" when it is not grade >= 2 alone (grade >= 2 or a DME label)
    referable_truth: np.ndarray | None = None

    def is_referable(self) -> np.ndarray:
        return self.grade >= 2 if self.referable_truth is None else self.referable_truth


def outcomes_from_rows(rows: list[dict[str, Any]], *, use_dme: bool = True,
                       dme_in_truth: bool = False) -> Outcomes:
    """Rows with id, patient, grade, p0..p4 and the fold's thresholds -> decided outcomes.

    Rows that carry p_dme and dme_threshold (a bundle with a DME output) are decided with it
    unless use_dme is off; dme_in_truth counts a photo with a DME label of 1 as referable
    (the programmes' definition: grade >= 2 and/or DME)."""
    decided, calls, scores = [], [], []
    for row in rows:
        probs = [float(row[f"p{g}"]) for g in range(5)]
        cuts = tuple(float(c) for c in str(row.get("grade_cuts") or "").split()) or None
        dme_t = _number(row.get("dme_threshold")) if use_dme else None
        decision = decide(probs, Thresholds(
            float(row["referable_threshold"]), float(row["vision_threatening_threshold"]), cuts,
            vt_grade_by_probability=str(row.get("vt_grade_by_probability") or "0") == "1",
            dme=dme_t), p_dme=_number(row.get("p_dme")) if dme_t is not None else None)
        decided.append(decision.grade)
        calls.append(bool(decision.referable))
        scores.append(sum(probs[2:]))
    grade = np.array([int(r["grade"]) for r in rows])
    truth = None
    if dme_in_truth:
        truth = (grade >= 2) | np.array([_number(r.get("dme_label")) == 1 for r in rows])
    return Outcomes([r["id"] for r in rows], [r["patient"] for r in rows], grade,
                    np.array(decided), np.array(calls), np.array(scores), truth)


def _number(value: Any) -> float | None:
    """A CSV cell or a value as a float; None for an empty cell (no DME output / no label)."""
    if value is None or value == "":
        return None
    return float(value)


def point_metrics(o: Outcomes, idx: np.ndarray | None = None) -> dict[str, float | None]:
    idx = np.arange(len(o.ids)) if idx is None else idx
    y, ref = o.grade[idx], o.is_referable()[idx]
    call = o.referable_call[idx]
    return {
        "referable_auroc": binary_auroc(ref, o.p_referable[idx]),
        "kappa_quadratic": cohen_kappa(y, o.decided[idx], quadratic=True),
        "sensitivity": float(call[ref].mean()) if ref.any() else None,
        "specificity": float((~call[~ref]).mean()) if (~ref).any() else None,
    }


def patient_resamples(photo_patients: list[str], reps: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Photo indices of `reps` bootstrap draws of patients with replacement (a patient's photos
    travel together); the same seed gives the same draws to every caller."""
    patients = sorted(set(photo_patients))
    rows_of: dict[str, list[int]] = {p: [] for p in patients}
    for i, p in enumerate(photo_patients):
        rows_of[p].append(i)
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        chosen = rng.integers(0, len(patients), len(patients))
        yield np.fromiter((i for c in chosen for i in rows_of[patients[c]]), dtype=np.int64)


def bootstrap(o: Outcomes, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, Any]:
    """Point estimates and percentile 95% intervals, resampling patients with replacement."""
    patients = sorted(set(o.patients))
    draws: dict[str, list[float]] = {k: [] for k in point_metrics(o)}
    for idx in patient_resamples(o.patients, reps, seed):
        for key, value in point_metrics(o, idx).items():
            if value is not None:
                draws[key].append(value)
    point = point_metrics(o)
    return {key: {"value": point[key],
                  "ci95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                  if len(v) >= reps // 2 else None}
            for key, v in draws.items()} | {
        "n_photos": len(o.ids), "n_patients": len(patients),
        "n_referable": int(o.is_referable().sum()), "bootstrap_reps": reps}


def fold_report_main(prog: str, doc: str | None, report: Callable[[Path, int], str],
                     argv: list[str] | None) -> int:
    """The command line of a report read from a cross-validation folder's fold files:
    print the table and, with --out, write it (training.operating_rules, .patient_level)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cv_dir", type=Path, help="a training.crossval output folder")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPS)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    text = report(args.cv_dir, args.bootstrap)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------- folds
def fold_config(cfg: TrainConfig, out: Path, k: int) -> TrainConfig:
    data = replace(cfg.data, cv_fold=k)
    return replace(cfg, data=data, out_dir=str(out), run_name=f"fold{k}",
                   bundle_name=f"{cfg.bundle_name or cfg.run_name}-fold{k}",
                   bundle_dir=str(out / f"fold{k}" / "bundle"))


# labels of the bundle, not of what a fold trains or predicts: a new version reuses the folds
FOLD_NEUTRAL_KEYS = ("version",)


def fold_done(cfg: TrainConfig) -> bool:
    run_dir = Path(cfg.out_dir) / cfg.run_name
    return (run_dir / "test_predictions.csv").is_file() and same_recipe(cfg)


def same_recipe(cfg: TrainConfig) -> bool:
    """Whether the run folder's saved config.yaml is this recipe (`version` aside)."""
    saved = Path(cfg.out_dir) / cfg.run_name / "config.yaml"
    if not saved.is_file():
        return False
    try:  # read through the config class, so a field added since (at its default) is no change
        previous = load_config(saved).to_dict()
    except ConfigError:  # a field since removed or renamed: not this recipe any more
        return False
    return _fold_relevant(previous) == _fold_relevant(cfg.to_dict())


def _fold_relevant(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in FOLD_NEUTRAL_KEYS}


def run_folds(cfg: TrainConfig, out: Path, *, progress: bool) -> list[dict[str, Any]]:
    from training.run import run

    timings = []
    for k in range(cfg.data.cv_folds):
        fcfg = fold_config(cfg, out, k)
        if fold_done(fcfg):
            print(f"fold {k}: already done ({out / fcfg.run_name})", flush=True)
            continue
        start = time.monotonic()
        run(fcfg, progress=progress)
        timings.append({"fold": k, "seconds": round(time.monotonic() - start, 1)})
        print(f"fold {k}: trained in {timings[-1]['seconds']:.0f} s", flush=True)
    return timings


def read_oof(out: Path, folds: int) -> list[dict[str, Any]]:
    rows = []
    for k in range(folds):
        with (out / f"fold{k}" / "test_predictions.csv").open(newline="", encoding="utf-8") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def compare_rows(bundle_path: str, cfg: TrainConfig) -> list[dict[str, Any]]:
    """An existing bundle's calibrated predictions on the same photos (every decodable photo,
    quality gate off, as the CV rows are), in the CV rows' shape."""
    from core.predict import Predictor
    from training.datasets import resolve_preset
    from training.evaluate_cross_dataset import DatasetSpec, evaluate_dataset

    bundle = load_bundle(bundle_path)
    csv_path, images, _ = resolve_preset(cfg.data)
    result = evaluate_dataset(Predictor(bundle, "cpu"),
                              DatasetSpec(bundle.manifest.name, cfg.data.preset, csv_path, images))
    cal = bundle.manifest.calibration
    patient = _patients(cfg)
    return [{"id": r["id"], "patient": patient.get(r["id"], r["id"]), "grade": r["grade"],
             **{f"p{g}": r["probs"][g] for g in range(5)},
             "referable_threshold": cal.referable_threshold,
             "vision_threatening_threshold": cal.vision_threatening_threshold,
             "grade_cuts": " ".join(str(c) for c in cal.grade_thresholds or ()),
             "vt_grade_by_probability": int(cal.vt_grade_by_probability)}
            for r in result.predictions]


def model_label(cfg: TrainConfig) -> str:
    """How the table names the recipe: "tf_efficientnet_lite0 (run)" for a timm model,
    "RETFound from mae-demo-encoder (run)" for a tier started from a checkpoint."""
    if cfg.model.checkpoint_path:
        from core.archs.tiers import get_tier

        start = Path(cfg.model.checkpoint_path).name
        return f"{get_tier(cfg.model.tier).label} from {start} ({cfg.run_name})"
    return f"{cfg.model.name} ({cfg.run_name})"


def _patients(cfg: TrainConfig) -> dict[str, str]:
    from training.datasets import load_records

    return {r.id: r.patient for r in load_records(cfg.data)[0]}


# ----------------------------------------------------------------------------- report
def _cell(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "n/a"
    ci = entry["ci95"]
    return f"{entry['value']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{entry['value']:.3f}"


def table(results: dict[str, dict[str, Any]], first: str = "model") -> str:
    lines = [f"| {first} | photos (patients, referable) | referable AUROC | quadratic kappa | "
             "sensitivity | specificity |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['n_photos']} ({r['n_patients']}, {r['n_referable']}) | "
                     + " | ".join(_cell(r[k]) for k in ("referable_auroc", "kappa_quadratic",
                                                        "sensitivity", "specificity")) + " |")
    return "\n".join(lines) + "\n"


def per_fold(rows: list[dict[str, Any]], folds: int) -> list[dict[str, Any]]:
    out = []
    for k in range(folds):
        sub = [r for r in rows if int(r["fold"]) == k]
        out.append({"fold": k, "n": len(sub)} | point_metrics(outcomes_from_rows(sub)))
    return out


def write_report(out: Path, results: dict[str, Any], folds: list[dict[str, Any]],
                 timings: list[dict[str, Any]], label: str) -> str:
    text = "\n".join([
        f"# {len(folds)}-fold patient-disjoint cross-validation: {label}", "",
        "Out-of-fold predictions; each photo decided by its own fold's calibrated operating "
        "rule (core.grading.decide). Quality gate off (every decodable photo). 95% intervals: "
        f"bootstrap over patients, {next(iter(results.values()))['bootstrap_reps']} resamples.",
        "", table(results), "",
        "Per fold (point estimates): " + "; ".join(
            f"fold {f['fold']} (n={f['n']}) AUROC {_fmt(f['referable_auroc'])}, QWK "
            f"{_fmt(f['kappa_quadratic'])}" for f in folds), ""])
    (out / "cv_table.md").write_text(text, encoding="utf-8")
    (out / "cv_summary.json").write_text(json.dumps(
        {"results": results, "per_fold": folds, "timings": timings}, indent=1), encoding="utf-8")
    return text


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def attach_to_bundle(bundle_path: Path, summary: dict[str, Any], table_text: str) -> None:
    """The final bundle's headline: the cross-validation figures of its own recipe."""
    bundle = load_bundle(bundle_path)
    evaluation = dict(bundle.manifest.evaluation) | {"cross_validation": summary}
    manifest = replace(bundle.manifest, evaluation=evaluation)
    from training.held_out import with_section

    card = (bundle_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    body = table_text.split("\n", 1)[1].lstrip()  # the report's own "# ..." title line goes
    cv = ("## Headline: 5-fold cross-validation of this recipe on photos used for neither "
          "training, epoch choice nor calibration\n\n" + body + "\n")
    finalize_bundle(bundle_path, manifest, with_section(card, cv))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.crossval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="default runs/<run_name>-cv")
    parser.add_argument("--compare", nargs="*", default=[], metavar="BUNDLE",
                        help="existing bundles to evaluate on the same photos")
    parser.add_argument("--final", action="store_true",
                        help="then train on all photos and attach the table to that bundle")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPS)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        out = Path(args.out or Path(cfg.out_dir) / f"{cfg.run_name}-cv")
        timings = run_folds(cfg, out, progress=not args.no_progress)
        rows = read_oof(out, cfg.data.cv_folds)
        label = model_label(cfg)
        results = {f"{label}, out-of-fold": bootstrap(outcomes_from_rows(rows), args.bootstrap)}
        for path in args.compare:
            results[f"{Path(path).name} (existing bundle)"] = bootstrap(
                outcomes_from_rows(compare_rows(path, cfg)), args.bootstrap)
        text = write_report(out, results, per_fold(rows, cfg.data.cv_folds), timings, label)
        print(text)
        if args.final:
            final_run(cfg, out, results, text, progress=not args.no_progress)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def final_run(cfg: TrainConfig, out: Path, results: dict[str, Any], text: str, *,
              progress: bool) -> None:
    from training.run import run

    start = time.monotonic()
    result = run(cfg, progress=progress)
    seconds = round(time.monotonic() - start, 1)
    print(f"final run on all photos: {seconds:.0f} s", flush=True)
    if result.bundle is not None:
        summary = {"results": results, "training_seconds": seconds, "cv_dir": str(out)}
        attach_to_bundle(result.bundle.path, summary, text)
        print(f"bundle {result.bundle.path}: cross-validation table attached", flush=True)


if __name__ == "__main__":
    sys.exit(main())
