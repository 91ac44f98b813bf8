"""Cross-dataset evaluation: how a bundle does on datasets it was not validated on.

    python -m training.evaluation.evaluate_cross_dataset --checkpoint models/demo-baseline \
        --datasets messidor2:data/messidor2/messidor_data.csv:data/messidor2/IMAGES \
                   idrid-test=idrid:data/idrid/test.csv:data/idrid/test_images [--out reports/x]

Dataset spec: `NAME:CSV:DIR` where NAME is a preset (aptos, eyepacs, messidor2, idrid,
synthetic; training.trainer.datasets.PRESETS) that tells the CSV's column layout and file suffix, or
`LABEL=PRESET:CSV:DIR` to name the dataset yourself (e.g. two APTOS-layout sets). DIR may be
left empty (`aptos:train.csv:`) for the preset's image folder beside the CSV.

Why two sets of metrics: the dashboard never grades a photo its quality gate rejects
("ungradable means refer"), so the headline metrics exclude those photos and report how many
there were; the gate-off metrics show what the model does on everything decodable, so a gate
that hides failures is visible. Probabilities are temperature-calibrated and sensitivity /
specificity use the bundle's own operating thresholds, exactly as in the dashboard. The gap is
external minus the bundle's validation figure (manifest.evaluation): negative = worse, except
ECE, where positive = worse. Gate-on QWK, referable AUROC, sensitivity and specificity carry 95%
intervals from a bootstrap over patients (`--bootstrap N` resamples, 0 for none), as in
training.evaluation.crossval, so a figure from 400 photos is not read as more exact than it is.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.bundle import Bundle, load_bundle
from core.errors import ConfigError, DRError
from core.grading import REFERABLE_MIN_GRADE, decide
from core.predict import Predictor, PreparedImage
from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE
from training.common.metrics import evaluate, metric_value
from training.evaluation.bootstrap import BOOTSTRAP_REPS, Outcomes, bootstrap
from training.evaluation.held_out import attach_held_out
from training.trainer.config import DataConfig
from training.trainer.datasets import PRESETS, LabelledImage, load_records

# (label, path into training.common.metrics.evaluate's dict)
METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("QWK", ("kappa_quadratic",)),
    ("kappa", ("kappa",)),
    ("accuracy", ("accuracy",)),
    ("macro AUROC", ("macro_auroc",)),
    ("referable sensitivity", ("referable", "sensitivity")),
    ("referable specificity", ("referable", "specificity")),
    ("referable AUROC", ("referable", "auroc")),
    ("ECE", ("ece",)),
)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    preset: str
    csv: Path
    images: Path | None


@dataclass
class DatasetResult:
    """One dataset's outcome; metrics dicts are training.common.metrics.evaluate's (None when empty)."""

    spec: DatasetSpec
    rows: int
    used: int
    dropped: dict[str, int]
    unreadable: dict[str, str]
    ungradable: int
    quality_levels: dict[str, int]
    reject_reasons: dict[str, int]
    gated: dict[str, Any] | None
    ungated: dict[str, Any] | None
    gap: dict[str, dict[str, float | None]]
    validation_n: int | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # gate on: 95% intervals from a bootstrap over patients (training.evaluation.bootstrap)
    intervals: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = {k: str(v) if v is not None else None for k, v in asdict(self.spec).items()}
        data.pop("predictions")
        return data


def parse_dataset_spec(text: str) -> DatasetSpec:
    """`PRESET:CSV:DIR` or `LABEL=PRESET:CSV:DIR` (DIR may be empty)."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not parts[1]:
        raise ConfigError(f"--datasets {text!r}: expected NAME:CSV:DIR, e.g. "
                          "messidor2:data/messidor2/messidor_data.csv:data/messidor2/IMAGES")
    head, csv_path, images = parts
    name, _, preset = head.partition("=")
    preset = preset or name
    if preset not in PRESETS:
        raise ConfigError(f"--datasets {text!r}: unknown preset {preset!r}; use one of "
                          f"{sorted(PRESETS)} (or LABEL=PRESET:CSV:DIR)")
    return DatasetSpec(name or preset, preset, Path(csv_path), Path(images) if images else None)


def evaluate_dataset(predictor: Predictor, spec: DatasetSpec, *, limit: int | None = None,
                     progress: bool = False, reps: int = BOOTSTRAP_REPS) -> DatasetResult:
    """Predict every labelled image once; metrics with and without the quality gate."""
    data = DataConfig(preset=spec.preset, csv=str(spec.csv),
                      images=str(spec.images) if spec.images else None, limit=limit)
    records, summary = load_records(data)
    unreadable: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    chunks = range(0, len(records), predictor.max_batch)
    for lo in tqdm(chunks, desc=spec.name, disable=not progress, leave=False):
        rows += predict_chunk(predictor, records[lo:lo + predictor.max_batch], unreadable)
    y = np.array([r["grade"] for r in rows], dtype=np.int64)
    probs = np.array([r["probs"] for r in rows], dtype=np.float64).reshape(-1, 5)
    gradable = np.array([r["gradable"] for r in rows], dtype=bool)
    cal, validation = predictor.manifest.calibration, predictor.manifest.evaluation
    gated = _metrics(y[gradable], probs[gradable], cal)
    levels = Counter(r["quality"] for r in rows)
    reasons = Counter(reason.split(" (")[0]  # "low resolution (field 140 px)" -> one key
                      for r in rows if not r["gradable"] for reason in r["reasons"])
    return DatasetResult(spec, summary["rows"], summary["used"], summary["dropped"], unreadable,
                         int((~gradable).sum()), dict(levels), dict(reasons.most_common(10)),
                         gated, _metrics(y, probs, cal), generalisation_gap(validation, gated),
                         validation.get("n") if isinstance(validation.get("n"), int) else None,
                         rows, gated_intervals([r for r in rows if r["gradable"]], reps))


def gated_intervals(rows: list[dict[str, Any]], reps: int = BOOTSTRAP_REPS) -> dict[str, Any]:
    """95% intervals for the served grades of the gradable photos: both eyes of a patient are
    resampled together, as in the cross-validation table, so the two tables read alike."""
    if not rows or reps <= 0:
        return {}
    outcomes = Outcomes([r["id"] for r in rows], [r["patient"] for r in rows],
                        np.array([r["grade"] for r in rows]),
                        np.array([r["predicted"] for r in rows]),
                        np.array([r["predicted"] >= REFERABLE_MIN_GRADE for r in rows]),
                        np.array([r["p_referable"] for r in rows]))
    return bootstrap(outcomes, reps)


def predict_chunk(predictor: Predictor, records: list[LabelledImage],
                   unreadable: dict[str, str]) -> list[dict[str, Any]]:
    prepared: list[tuple[LabelledImage, PreparedImage]] = []
    for record in records:
        try:
            prepared.append((record, predictor.prepare(record.path)))
        except DRError as exc:  # undecodable files are counted, never fatal
            unreadable[record.id] = str(exc)
    if not prepared:
        return []
    batch = torch.stack([p.pre.tensor for _, p in prepared])
    probs, p_dme = predictor.scores(batch)  # every photo: the gate is applied afterwards
    dme = [None] * len(prepared) if p_dme is None else [float(v) for v in p_dme]
    return [{"id": r.id, "patient": r.patient, "grade": r.grade, "gradable": p.quality.gradable,
             "quality": p.quality.level, "reasons": list(p.quality.reasons),
             "predicted": decide(pr, predictor.thresholds, p_dme=d).grade,  # as served
             "p_referable": float(pr[2:].sum()),
             "probs": [float(v) for v in pr], "p_dme": d}
            for (r, p), pr, d in zip(prepared, probs, dme, strict=True)]


def _metrics(y: np.ndarray, probs: np.ndarray, cal) -> dict[str, Any] | None:
    if y.size == 0:
        return None
    return evaluate(y, probs, referable_threshold=cal.referable_threshold,
                    vision_threatening_threshold=cal.vision_threatening_threshold,
                    grade_thresholds=cal.grade_thresholds,
                    vt_grade_by_probability=cal.vt_grade_by_probability)


def generalisation_gap(validation: dict[str, Any] | None,
                       external: dict[str, Any] | None) -> dict[str, dict[str, float | None]]:
    """Per metric: the bundle's validation figure, the external one, and external - validation."""
    gap = {}
    for label, path in METRICS:
        v, e = metric_value(validation, path), metric_value(external, path)
        gap[label] = {"validation": v, "external": e,
                      "delta": None if v is None or e is None else e - v}
    return gap


def dataset_table(result: DatasetResult) -> str:
    """Markdown: validation vs gate on vs gate off vs gap, plus counts."""
    lines = [f"### {result.spec.name} (preset {result.spec.preset}, {result.spec.csv})", "",
             "| metric | bundle validation | gate on | gate on, 95% interval | gate off | "
             "gap (gate on - validation) |",
             "|---|---|---|---|---|---|"]
    for label, path in METRICS:
        g = result.gap[label]
        lines.append(f"| {label} | {_f(g['validation'])} | {_f(g['external'])} | "
                     f"{_interval(result.intervals, label)} | "
                     f"{_f(metric_value(result.ungated, path))} | {_f(g['delta'], signed=True)} |")
    n_gated = result.gated["n"] if result.gated else 0
    n_all = result.ungated["n"] if result.ungated else 0
    lines += [f"| n | {result.validation_n or 'n/a'} | {n_gated} | "
              f"{result.intervals.get('n_patients', 'n/a')} patients | {n_all} | |",
              f"| ungradable (excluded when gate on) | | {result.ungradable} | | included | |", ""]
    extra = [f"{result.used} of {result.rows} CSV rows used"]
    if result.dropped:
        extra.append("dropped: " + ", ".join(f"{k} {v}" for k, v in result.dropped.items()))
    if result.unreadable:
        extra.append(f"unreadable files excluded from both: {len(result.unreadable)}")
    if result.reject_reasons:
        extra.append("gate rejections: " + "; ".join(
            f"{k} ({v})" for k, v in result.reject_reasons.items()))
    return "\n".join(lines + ["; ".join(extra), ""])


def overview_table(results: list[DatasetResult]) -> str:
    head = "| dataset | n (gate on) | ungradable | " + " | ".join(m for m, _ in METRICS) + \
           " | QWK gap |"
    lines = [head, "|" + "---|" * (len(METRICS) + 4)]
    for r in results:
        values = " | ".join(_f(metric_value(r.gated, p)) for _, p in METRICS)
        lines.append(f"| {r.spec.name} | {r.gated['n'] if r.gated else 0} | {r.ungradable} | "
                     f"{values} | {_f(r.gap['QWK']['delta'], signed=True)} |")
    return "\n".join(lines) + "\n"


def report_markdown(bundle: Bundle, results: list[DatasetResult]) -> str:
    m = bundle.manifest
    cal = m.calibration
    lines = [f"# Cross-dataset evaluation of {m.name} {m.version}", "",
             f"Bundle `{bundle.key}` (tier {m.tier}); temperature {cal.temperature:.3f}, "
             f"referable threshold {cal.referable_threshold:.3f}, vision-threatening threshold "
             f"{cal.vision_threatening_threshold:.3f}.", ""]
    if m.demo:
        lines += [f"**{DEMO_NOTICE}**", ""]
    lines += ["## Overview (quality gate on)", "", overview_table(results), ""]
    lines += [dataset_table(r) for r in results]
    lines += ["Gap = external - validation: negative is worse, except ECE (positive is worse). "
              "Validation figures come from the bundle's own training distribution.", "",
              RESEARCH_USE_NOTICE, ""]
    return "\n".join(lines)


def write_outputs(out_dir: Path, bundle: Bundle, results: list[DatasetResult]) -> list[Path]:
    """cross_dataset.json, cross_dataset.md and predictions_<name>.csv per dataset."""
    out_dir.mkdir(parents=True, exist_ok=True)
    m = bundle.manifest
    payload = {"bundle": {"name": m.name, "version": m.version, "key": bundle.key,
                          "tier": m.tier, "demo": m.demo, "path": str(bundle.path)},
               "calibration": asdict(m.calibration),
               "datasets": [r.to_dict() for r in results],
               "notices": [RESEARCH_USE_NOTICE] + ([DEMO_NOTICE] if m.demo else [])}
    paths = [out_dir / "cross_dataset.json", out_dir / "cross_dataset.md"]
    paths[0].write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    paths[1].write_text(report_markdown(bundle, results), encoding="utf-8")
    for r in results:
        path = out_dir / f"predictions_{_slug(r.spec.name)}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "grade", "predicted", "p_referable", "quality", "reasons"])
            for row in r.predictions:
                writer.writerow([row["id"], row["grade"], row["predicted"],
                                 f"{row['p_referable']:.6f}", row["quality"],
                                 "; ".join(row["reasons"])])
        paths.append(path)
    return paths


def run_cross_dataset(checkpoint: str | Path, specs: list[DatasetSpec], *, device: str = "auto",
                      tta: bool | None = None, limit: int | None = None, progress: bool = False,
                      reps: int = BOOTSTRAP_REPS) -> tuple[Bundle, list[DatasetResult]]:
    bundle = load_bundle(checkpoint)
    predictor = Predictor(bundle, device, tta=tta)
    return bundle, [evaluate_dataset(predictor, s, limit=limit, progress=progress, reps=reps)
                    for s in specs]


# METRICS labels with an interval -> training.evaluation.bootstrap.point_metrics keys
INTERVAL_KEYS = {"QWK": "kappa_quadratic", "referable AUROC": "referable_auroc",
                 "referable sensitivity": "sensitivity", "referable specificity": "specificity"}


def _interval(intervals: dict[str, Any], label: str) -> str:
    ci = (intervals.get(INTERVAL_KEYS.get(label, "")) or {}).get("ci95")
    return f"{ci[0]:.3f} to {ci[1]:.3f}" if ci else ""


def _f(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.evaluate_cross_dataset",
                                     description="Evaluate a bundle on other datasets.")
    parser.add_argument("--checkpoint", required=True, help="bundle folder")
    parser.add_argument("--datasets", nargs="+", required=True, metavar="NAME:CSV:DIR",
                        help="PRESET:CSV:DIR or LABEL=PRESET:CSV:DIR; presets: "
                             + ", ".join(sorted(PRESETS)))
    parser.add_argument("--out", default=None, help="folder for JSON, markdown and predictions")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="horizontal-flip test-time averaging on (--tta) or off (--no-tta); "
                             "default: as the bundle was calibrated (calibration.flip_tta)")
    parser.add_argument("--limit", type=int, default=None, help="first N rows per dataset")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPS,
                        help="resamples for the 95%% intervals (0: none)")
    parser.add_argument("--attach", action="store_true",
                        help="also write the gate-on figures into the bundle's manifest and "
                             "model card (the Models page shows them); the weights are untouched")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        specs = [parse_dataset_spec(s) for s in args.datasets]
        bundle, results = run_cross_dataset(args.checkpoint, specs, device=args.device,
                                            tta=args.tta, limit=args.limit,
                                            progress=not args.no_progress,
                                            reps=args.bootstrap)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report_markdown(bundle, results))
    if args.out:
        for path in write_outputs(Path(args.out), bundle, results):
            print(f"wrote {path}")
    if args.attach:
        rows = {r.spec.name: r.intervals for r in results if r.intervals}
        if len(rows) < len(results):
            print("error: --attach needs intervals for every dataset (--bootstrap > 0 and "
                  "at least one gradable photo)", file=sys.stderr)
            return 2
        attach_held_out(bundle.path, rows)
        print(f"attached to {bundle.path}: {', '.join(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
