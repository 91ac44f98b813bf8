"""Train on several real sources and measure per source on photos no step of training saw.

    python -m training.evaluation.multi_source --config training/configs/three_sources_lite0.yaml \
        --compare models/eyepacs-lite0

One command, resumable (a run whose test_predictions.csv sits beside the same config is not
re-run, a killed one continues from its last finished epoch, graded tables are read back), in
three steps:
1. the recipe on every source with a fixed, group-disjoint held-out test split
   (`data.test_fraction`, stratified by source and grade): this run's bundle is the one shipped;
2. leave-one-source-out: the same recipe trained on all sources but one and tested on the whole
   of that one (`data.hold_out_source`), what a clinic with a new camera and population should
   expect (`--no-loso` skips it);
3. the tables: every bundle graded through `core.predict.Predictor` exactly as served (flip
   averaging as calibrated; quality gate off, so every decodable photo counts, as in the
   cross-validation tables) and decided by `core.grading.decide`; per source and pooled,
   referable AUROC, quadratic kappa, sensitivity and specificity at the bundle's own operating
   point, each with a 95% bootstrap interval over patients / examinations. `--compare` bundles
   are graded on the same photos. `--attach` writes the held-out table onto the shipped bundle's
   manifest and card (Models page).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.bundle import load_bundle
from core.errors import DRError
from training.evaluation.bootstrap import BOOTSTRAP_REPS, bootstrap, outcomes_from_rows, table
from training.evaluation.crossval import fold_done, same_recipe
from training.evaluation.dme_eval import (
    attach_dme,
    dme_bootstrap,
    dme_table,
    has_dme,
    implied_negative_bootstrap,
)
from training.trainer.config import TrainConfig, load_config
from training.trainer.datasets import LabelledImage, load_records

POOLED = "pooled"
WHAT = ("photos used for neither training, epoch choice nor calibration: a fixed held-out split "
        "of each set, and for the leave-one-set-out rows the whole of a set the model never saw; "
        "quality gate off, every decodable photo; grades as served; 95% bootstrap intervals over "
        "patients / examinations")


def set_name(source: str) -> str:
    """How tables name a source: the set's own spelling for the presets' default names."""
    from training.trainer.finalize import SET_NAMES

    return SET_NAMES.get(source, source)


# ----------------------------------------------------------------------------- runs
def source_names(cfg: TrainConfig) -> list[str]:
    return [s.name or s.preset for s in cfg.data.sources]


def loso_config(cfg: TrainConfig, source: str) -> TrainConfig:
    """The recipe without `source`, tested on all of it; its bundle stays in its run folder."""
    run_name = f"{cfg.run_name}-without-{source}"
    data = replace(cfg.data, test_fraction=0.0, hold_out_source=source)
    return replace(cfg, data=data, run_name=run_name, bundle_name=run_name,
                   bundle_dir=str(Path(cfg.out_dir) / run_name / "bundle"))


def bundle_path(cfg: TrainConfig) -> Path:
    return Path(cfg.bundle_dir or Path(cfg.out_dir) / cfg.run_name / "bundle")


def train_if_needed(cfg: TrainConfig, *, progress: bool) -> float | None:
    """Seconds it took, or None when a finished run of this exact config was reused."""
    from training.trainer.run import run

    if fold_done(cfg) and (bundle_path(cfg) / "manifest.json").is_file():
        print(f"{cfg.run_name}: already trained ({Path(cfg.out_dir) / cfg.run_name})", flush=True)
        return None
    start = time.monotonic()
    # a killed run of this recipe continues from its last epoch; another recipe's folder is
    # trained over from the start
    run(cfg, resume=same_recipe(cfg), progress=progress)
    seconds = round(time.monotonic() - start, 1)
    print(f"{cfg.run_name}: trained in {seconds:.0f} s", flush=True)
    return seconds


# ----------------------------------------------------------------------------- grading
def test_records(cfg: TrainConfig) -> list[LabelledImage]:
    """The photos the run held out, read back from its own test_predictions.csv."""
    path = Path(cfg.out_dir) / cfg.run_name / "test_predictions.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        held = [row["id"] for row in csv.DictReader(fh)]
    by_id = {r.id: r for r in load_records(cfg.data)[0]}
    return [by_id[i] for i in held]


def graded_rows(bundle: Path, records: list[LabelledImage]) -> list[dict[str, Any]]:
    """Each photo through the Predictor as served, in the rows shape crossval decides on."""
    from core.predict import Predictor
    from training.evaluation.evaluate_cross_dataset import predict_chunk

    predictor = Predictor(load_bundle(bundle), "cpu")
    cal = predictor.manifest.calibration
    unreadable: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for lo in range(0, len(records), predictor.max_batch):
        rows += predict_chunk(predictor, records[lo:lo + predictor.max_batch], unreadable)
    by_id = {r.id: r for r in records}
    return [{"id": r["id"], "patient": r["patient"], "grade": r["grade"],
             "source": by_id[r["id"]].source, "gradable": int(r["gradable"]),
             **{f"p{g}": r["probs"][g] for g in range(5)},
             "referable_threshold": cal.referable_threshold,
             "vision_threatening_threshold": cal.vision_threatening_threshold,
             "grade_cuts": " ".join(str(c) for c in cal.grade_thresholds or ()),
             "vt_grade_by_probability": int(cal.vt_grade_by_probability),
             "p_dme": _blank(r["p_dme"]), "dme_threshold": _blank(cal.dme_threshold),
             "dme_label": _blank(by_id[r["id"]].dme)} for r in rows]


def _blank(value: Any) -> Any:
    """None as an empty CSV cell (no DME output, no DME label)."""
    return "" if value is None else value


def per_source(rows: list[dict[str, Any]], reps: int, *, pooled: bool = True,
               **decide: bool) -> dict[str, dict[str, Any]]:
    """{source: bootstrap figures} (+ pooled), groups resampled within what is measured.
    `decide`: use_dme / dme_in_truth, passed to crossval.outcomes_from_rows."""
    out = {}
    for name in sorted({r["source"] for r in rows}):
        sub = [r for r in rows if r["source"] == name]
        out[set_name(name)] = bootstrap(outcomes_from_rows(sub, **decide), reps) | {
            "ungradable_by_gate": sum(1 - int(r["gradable"]) for r in sub)}
    if pooled and len(out) > 1:
        out[POOLED] = bootstrap(outcomes_from_rows(rows, **decide), reps)
    return out


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def cached_rows(path: Path, bundle: Path, records: list[LabelledImage]) -> list[dict[str, Any]]:
    """Grade once; a rerun of the report reads the rows back (the evaluation resumes too)."""
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    path = path.with_name(f"{path.stem}-{manifest['weights']['sha256'][:12]}.csv")
    rows = read_rows(path)
    if (rows is None or {r["id"] for r in rows} != {r.id for r in records}
            or "dme_label" not in rows[0]):  # graded before DME was recorded: grade again
        rows = graded_rows(bundle, records)
        write_rows(path, rows)
    return rows


# ----------------------------------------------------------------------------- report
def labelled(results: dict[str, dict[str, Any]], prefix: str) -> dict[str, dict[str, Any]]:
    return {f"{prefix}{name}": r for name, r in results.items()}


def report(sections: list[tuple[str, str, dict[str, dict[str, Any]]]], reps: int) -> str:
    """Markdown: one table per section (title, what it measures, rows)."""
    lines = ["# Held-out figures per source", "",
             "Every photo graded through core.predict.Predictor as served (flip averaging as "
             "calibrated), decided by core.grading.decide at each bundle's own operating point. "
             "Quality gate off: every decodable photo counts. 95% intervals: bootstrap over "
             f"patients (EyePACS) / examinations (Messidor-2) / images (IDRiD), {reps} resamples.",
             ""]
    for title, what, rows in sections:
        lines += [f"## {title}", "", what, "", table(rows, first="model / photos"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.multi_source", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--compare", nargs="*", default=[], metavar="BUNDLE",
                        help="existing bundles graded on the same photos")
    parser.add_argument("--no-loso", action="store_true", help="skip leave-one-source-out")
    parser.add_argument("--attach", action="store_true",
                        help="write the held-out table onto the shipped bundle")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPS)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        text = run_all(cfg, args)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def run_all(cfg: TrainConfig, args: argparse.Namespace) -> str:
    if not cfg.data.sources or not cfg.data.test_fraction:
        from core.errors import ConfigError

        raise ConfigError("training.evaluation.multi_source needs data.sources and data.test_fraction > 0 "
                          "in the config (training/configs/three_sources_lite0.yaml)")
    progress = not args.no_progress
    out = Path(cfg.out_dir) / cfg.run_name
    timings = {cfg.run_name: train_if_needed(cfg, progress=progress)}
    loso = [] if args.no_loso else [loso_config(cfg, s) for s in source_names(cfg)]
    for lcfg in loso:
        timings[lcfg.run_name] = train_if_needed(lcfg, progress=progress)
    held = test_records(cfg)
    main_rows = cached_rows(out / "graded_test", bundle_path(cfg), held)
    shipped = per_source(main_rows, args.bootstrap)
    sections = [("This recipe on its held-out test split",
                 f"{cfg.run_name}: {len(held)} photos held out before training "
                 f"(data.test_fraction {cfg.data.test_fraction}, group-disjoint, stratified by "
                 "source and grade), used for neither training, epoch choice nor calibration.",
                 labelled(shipped, f"{cfg.bundle_name or cfg.run_name} on "))]
    for path in args.compare:
        rows = cached_rows(out / f"graded_test_{Path(path).name}", Path(path), held)
        sections.append((f"{Path(path).name} on the same photos", "An existing bundle graded "
                         "as served on exactly the photos above.",
                         labelled(per_source(rows, args.bootstrap), f"{Path(path).name} on ")))
    loso_results = {}
    for lcfg in loso:
        source = lcfg.data.hold_out_source
        rows = cached_rows(out / f"graded_loso_{source}", bundle_path(lcfg), test_records(lcfg))
        name = set_name(source)
        loso_results[f"trained without {name}, tested on all of {name}"] = per_source(
            rows, args.bootstrap, pooled=False)[name]
    if loso_results:
        sections.append(("Leave one source out", "The same recipe trained on the other sources "
                         "(their own selection and calibration splits) and tested on every photo "
                         "of the source it never saw: a new camera and population.",
                         loso_results))
    dme_results = dme_sections(main_rows, args.bootstrap, cfg, sections)
    text = report(sections, args.bootstrap)
    if dme_results:
        text += ("\n## DME output on the held-out split\n\nPhotos whose source grades DME "
                 "(Messidor-2, IDRiD), decided at the bundle's own DME threshold; for a source "
                 "without DME labels (EyePACS), how often its grade 0-1 photos are called DME "
                 "(specificity against the label those grades imply).\n\n"
                 + dme_table(dme_results) + "\n")
    (out / "per_source_report.md").write_text(text, encoding="utf-8")
    summary = out / "per_source_summary.json"
    timings = _kept_timings(summary, timings)
    summary.write_text(json.dumps({"sections": sections, "training_seconds": timings}, indent=1,
                                  default=_jsonable), encoding="utf-8")
    if args.attach:
        from training.evaluation.held_out import attach_held_out

        attach_held_out(bundle_path(cfg), labelled(shipped, "held-out split: ")
                        | {f"leave-one-source-out: {k}": v for k, v in loso_results.items()},
                        what=WHAT, merge=False)
        if dme_results:
            attach_dme(bundle_path(cfg), dme_results)
        print(f"held-out table attached to {bundle_path(cfg)}", flush=True)
    return text


def dme_sections(rows: list[dict[str, Any]], reps: int, cfg: TrainConfig,
                 sections: list) -> dict[str, dict[str, Any]]:
    """For a bundle with a DME output: the referable table with DME left out of the decision
    and with DME in the truth too (added to `sections`), and the DME figures per source."""
    if not has_dme(rows):
        return {}
    name = cfg.bundle_name or cfg.run_name
    sections.append(("Referable by the grade alone (DME output ignored)", "The same photos and "
                     "bundle, the referable decision taken without the DME output: what DME "
                     "adds to the table above.",
                     labelled(per_source(rows, reps, use_dme=False), f"{name} on ")))
    sections.append(("Referable as the programmes define it (grade >= 2 or DME)", "Truth: grade "
                     ">= 2 or a DME label of 1 (Messidor-2, IDRiD; EyePACS has no DME label); "
                     "decision: grade and DME output, as served.",
                     labelled(per_source(rows, reps, dme_in_truth=True), f"{name} on ")))
    out = {}
    for source in sorted({r["source"] for r in rows}):
        sub = [r for r in rows if r["source"] == source]
        result = dme_bootstrap(sub, reps)
        if result is not None:
            out[set_name(source)] = result
        elif (implied := implied_negative_bootstrap(sub, reps)) is not None:
            out[f"{set_name(source)} (grade 0-1: no exudates, so no DME)"] = implied
    return out


def _kept_timings(summary: Path, timings: dict[str, float | None]) -> dict[str, float | None]:
    """This call's training times, and for a run reused (None) the time it took when trained."""
    before = {}
    if summary.is_file():
        before = json.loads(summary.read_text(encoding="utf-8")).get("training_seconds") or {}
    return {name: seconds if seconds is not None else before.get(name)
            for name, seconds in timings.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
