"""Learning curve of one recipe: out-of-fold referable AUROC against the number of photos it
trained on, from cross-validations that differ only in `data.train_fraction`.

    python -m training.evaluation.learning_curve runs/eyepacs-lite0-lc0.25 runs/eyepacs-lite0-lc0.5 \\
        runs/eyepacs-lite0-lc0.75 runs/eyepacs-lite0-tta-cv --plot docs/learning_curve.png

Why: when ten recipes land within the same interval, the question is whether the recipe or the
number of photos is what holds a model back. Every folder must test the same photos with the
same selection and calibration splits (train_fraction leaves those alone), so all points are
resampled together: the slope per doubling of training photos gets a paired interval. The photo
count at which the fitted line would reach a target is an extrapolation, printed as such.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation.bootstrap import BOOTSTRAP_REPS, Outcomes, patient_resamples, point_metrics
from training.evaluation.paired_cv import aligned, read_outcomes
from training.trainer.config import load_config

METRIC = "referable_auroc"


@dataclass
class Point:
    """One cross-validation of the curve: its folder, fraction and mean training photos per fold."""

    cv_dir: Path
    fraction: float
    train_photos: float
    outcomes: Outcomes


def training_photos(cv_dir: Path) -> tuple[float, float]:
    """(train_fraction, mean training photos per fold), re-derived from each fold's saved config
    by the same split code the fold trained with."""
    from training.trainer.datasets import load_records
    from training.trainer.splits import make_splits

    counts, fractions = [], set()
    for config_path in sorted(cv_dir.glob("fold*/config.yaml")):
        cfg = load_config(config_path)
        records, _ = load_records(cfg.data)
        counts.append(len(make_splits(cfg, records).train))
        fractions.add(cfg.data.train_fraction)
    if len(fractions) != 1:
        raise SystemExit(f"{cv_dir}: folds disagree on train_fraction ({sorted(fractions)})")
    return fractions.pop(), float(np.mean(counts))


def read_points(cv_dirs: list[Path]) -> list[Point]:
    """The curve's points, fewest training photos first."""
    points = []
    for cv_dir in cv_dirs:
        fraction, photos = training_photos(cv_dir)
        points.append(Point(cv_dir, fraction, photos, read_outcomes(cv_dir)))
    return sorted(points, key=lambda p: p.train_photos)


def fit_log2(photos: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(intercept, slope per doubling) of the least-squares line value ~ a + b log2(photos)."""
    slope, intercept = np.polyfit(np.log2(photos), values, 1)
    return float(intercept), float(slope)


def photos_to_reach(target: float, intercept: float, slope: float) -> float:
    """Training photos at which the fitted line reaches `target` (inf if it never rises)."""
    doublings = (target - intercept) / slope if slope > 0 else float("inf")
    return float(2 ** doublings) if doublings < 1000 else float("inf")


def curve(points: list[Point], target: float, reps: int = BOOTSTRAP_REPS,
          seed: int = 0) -> dict[str, Any]:
    """Each point's AUROC with its interval, the fitted slope with a paired interval (the same
    patients drawn for every point), and the extrapolated photos to reach `target`."""
    base = points[-1].outcomes
    orders = [aligned(base, p.outcomes) for p in points]
    photos = np.array([p.train_photos for p in points])
    value = np.array([point_metrics(p.outcomes, o)[METRIC] for p, o in zip(points, orders,
                                                                             strict=True)])
    draws, slopes, reach = [], [], []
    for idx in patient_resamples(base.patients, reps, seed):
        drawn = [point_metrics(p.outcomes, o[idx])[METRIC] for p, o in zip(points, orders,
                                                                           strict=True)]
        if None in drawn:
            continue
        draws.append(drawn)
        a, b = fit_log2(photos, np.array(drawn))
        slopes.append(b)
        reach.append(photos_to_reach(target, a, b))
    intercept, slope = fit_log2(photos, value)
    ci = np.percentile(np.array(draws), [2.5, 97.5], axis=0).T
    return {"points": [{"cv_dir": str(p.cv_dir), "train_fraction": p.fraction,
                        "train_photos": p.train_photos, "value": float(v),
                        "ci95": [float(lo), float(hi)]}
                       for p, v, (lo, hi) in zip(points, value, ci, strict=True)],
            "intercept": intercept, "slope_per_doubling": slope,
            "slope_ci95": [float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5))],
            "target": target, "photos_to_target": photos_to_reach(target, intercept, slope),
            "photos_to_target_ci95": [float(np.percentile(reach, q, method="nearest"))
                                      for q in (2.5, 97.5)],  # "never" (inf) is a valid draw
            "bootstrap_reps": len(draws), "n_photos": len(base.ids)}


def _count(n: float) -> str:
    return "never (the line does not rise)" if not np.isfinite(n) else f"{n:,.0f}"


def report(result: dict[str, Any]) -> str:
    """The curve as a markdown table and the fitted line in words."""
    lines = ["| training photos per fold (fraction) | out-of-fold referable AUROC | cross-validation |",
             "|---|---|---|"]
    for p in result["points"]:
        lo, hi = p["ci95"]
        lines.append(f"| {p['train_photos']:.0f} ({p['train_fraction']:g}) | {p['value']:.3f} "
                     f"({lo:.3f}-{hi:.3f}) | `{p['cv_dir']}` |")
    lo, hi = result["slope_ci95"]
    reach_lo, reach_hi = result["photos_to_target_ci95"]
    lines += ["", f"Fitted line (least squares on log2 of training photos): "
              f"{result['slope_per_doubling']:+.3f} AUROC per doubling ({lo:+.3f} to {hi:+.3f}, "
              f"{result['bootstrap_reps']} paired patient resamples of {result['n_photos']} photos).",
              f"Extrapolated, not measured: the line reaches {result['target']:.2f} at about "
              f"{_count(result['photos_to_target'])} training photos per fold "
              f"(interval {_count(reach_lo)} to {_count(reach_hi)})."]
    return "\n".join(lines)


def plot_png(result: dict[str, Any], path: Path) -> Path:
    """AUROC with intervals on a log axis of training photos, the fitted line carried on to the
    target, so the distance left is seen rather than read."""
    from training.common.plots import pyplot, save_figure

    plt = pyplot()
    pts = result["points"]
    x = np.array([p["train_photos"] for p in pts])
    y = np.array([p["value"] for p in pts])
    err = np.abs(np.array([p["ci95"] for p in pts]).T - y)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.errorbar(x, y, yerr=err, fmt="o", color="#1f5f99", capsize=4, label="measured (95% CI)")
    reach = result["photos_to_target"]
    x_end = min(reach * 1.3, x.max() * 64) if np.isfinite(reach) else x.max() * 4
    line_x = np.geomspace(x.min(), x_end, 50)
    ax.plot(line_x, result["intercept"] + result["slope_per_doubling"] * np.log2(line_x), "--",
            color="#888888", label="fitted line, extrapolated beyond the last point")
    ax.axhline(result["target"], color="#b03030", lw=1, label=f"target {result['target']:.2f}")
    ax.set_xscale("log", base=2)
    ticks = [t for t in (25, 50, 100, 200, 400, 800, 1600, 3200) if x.min() / 1.5 <= t <= x_end]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("training photos per fold (log scale)")
    ax.set_ylabel("out-of-fold referable AUROC")
    ax.set_title("Learning curve: same test photos, fewer training photos")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.learning_curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cv_dirs", type=Path, nargs="+",
                        help="training.evaluation.crossval folders of one recipe at different train_fraction")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPS)
    parser.add_argument("--plot", type=Path, default=None, help="write the curve as a PNG")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if len(args.cv_dirs) < 2:
        parser.error("a curve needs at least two cross-validation folders")
    result = curve(read_points(args.cv_dirs), args.target, args.bootstrap)
    text = report(result)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.plot:
        print(f"plot: {plot_png(result, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
