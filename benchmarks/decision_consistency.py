"""Issue 12 check: one coherent decision per photo, and a heatmap of the grade on the card.

    python -m benchmarks.decision_consistency [--n 100] [--seed 120000] [--samples DIR]
                                              [--models DIR] [--bundle NAME] [--no-heatmaps]

For every grading bundle in the models folder (demo or not, including any bundle added since),
fresh synthetic photos (n, equal per grade, seeds the demo models never saw) and the labelled
photos of ../shared/fundus_samples (labels.csv) go through the bundle's Predictor, exactly as
the Grade page runs them. Per gradable photo it counts:

- contradictions of the served result (core.grading.decide): vtDR without referable, referable
  but grade < 2 (or the reverse), vtDR but grade < 3 (or the reverse), an urgency, headline or
  guideline text that does not follow the grade ("rescreen" beside a referable flag, "refer
  immediately" without vtDR);
- heatmap mismatches: the map the Grade page draws by default (dashboard.components.heatmap.
  displayed_target) explains another class than the grade on the card;
- for comparison, the same counts under the rule before issue 12 (grade by argmax or the
  ordinal cut points, flags at the thresholds independently, heatmap of the argmax class);
- how often the grade matches the synthetic / labelled grade under each rule.

Prints one markdown table; exit status 1 when any contradiction or heatmap mismatch is found.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import grading
from core.bundle import discover_bundles
from core.images import decode_image
from core.predict import Prediction, Predictor
from core.preprocessing import decode_min_side
from core.synthetic import generate_fundus

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "fundus_samples"


@dataclass
class Tally:
    photos: int = 0
    gradable: int = 0
    contradictions: int = 0
    heatmap_mismatch: int = 0
    old_contradictions: int = 0
    old_heatmap_mismatch: int = 0
    correct: int = 0
    old_correct: int = 0
    review: int = 0
    examples: list[str] = field(default_factory=list)


def contradictions(p: Prediction) -> list[str]:
    """What a clinician would see contradicting itself on this card (empty: coherent)."""
    out = []
    g, ref, vt = p.grade, p.referable, p.vision_threatening
    if vt and not ref:
        out.append("vtDR without referable")
    if ref != (g >= grading.REFERABLE_MIN_GRADE):
        out.append(f"referable={ref} with grade {g}")
    if vt != (g >= grading.VISION_THREATENING_MIN_GRADE):
        out.append(f"vtDR={vt} with grade {g}")
    if p.urgency != grading.urgency_of(g, gradable=True):
        out.append(f"urgency {p.urgency.label} with grade {g}")
    action = grading.follow_up(g).action
    if ("rescreen" in action) == bool(ref) or ("immediately" in action) != bool(vt):
        out.append(f"guideline {action!r} with referable={ref}, vtDR={vt}")
    headline = p.decision.headline if p.decision else ""
    if headline.startswith("Not referable") == bool(ref):
        out.append(f"headline {headline!r} with referable={ref}")
    return out


def old_rule(p: Prediction, cal) -> tuple[int, bool]:
    """(grade, contradiction?) under the rule before issue 12."""
    g = grading.decide_grade(p.probs, cal.grade_thresholds)
    ref = p.p_referable >= cal.referable_threshold
    vt = p.p_vision_threatening >= cal.vision_threatening_threshold
    return g, (vt and not ref) or ref != (g >= 2) or vt != (g >= 3)


def photos(n: int, seed: int, samples: Path) -> Iterator[tuple[str, np.ndarray, int | None]]:
    for i in range(n):
        grade = i % 5
        yield f"synthetic-{grade}-{seed + i}", generate_fundus(grade, seed + i).image, grade
    labels = samples / "labels.csv"
    if labels.is_file():
        with labels.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                path = samples / row["image"]
                if path.is_file():
                    level = row.get("level", "")
                    yield row["image"], path, int(level) if level.strip().isdigit() else None


def check(predictor: Predictor, n: int, seed: int, samples: Path, heatmaps: bool) -> Tally:
    from dashboard.components.heatmap import displayed_target  # what the pages draw by default

    t = Tally()
    cal = predictor.manifest.calibration
    spec = predictor.manifest.preprocessing
    for name, source, truth in photos(n, seed, samples):
        rgb = source if isinstance(source, np.ndarray) else decode_image(
            source, min_side=decode_min_side(spec))
        prepared = predictor.prepare(rgb)
        p = predictor.predict_prepared([prepared])[0]
        t.photos += 1
        if not p.gradable:
            continue
        t.gradable += 1
        t.review += p.decision.review
        bad = contradictions(p)
        if bad:
            t.contradictions += 1
            t.examples.append(f"{name}: {'; '.join(bad)}")
        old_grade, old_bad = old_rule(p, cal)
        t.old_contradictions += old_bad
        t.old_heatmap_mismatch += int(np.argmax(p.probs)) != old_grade
        if truth is not None:
            t.correct += p.grade == truth
            t.old_correct += old_grade == truth
        if heatmaps:
            exp = predictor.explain(prepared, target=displayed_target(p.grade))
            if exp.target_class != p.grade:
                t.heatmap_mismatch += 1
                t.examples.append(f"{name}: heatmap explains {exp.target}, card grade {p.grade}")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="fresh synthetic photos per bundle")
    ap.add_argument("--seed", type=int, default=120_000)
    ap.add_argument("--samples", type=Path, default=SAMPLES)
    ap.add_argument("--models", default=None, help="models folder (default: DR_MODELS_DIR or "
                                                   "models/)")
    ap.add_argument("--bundle", action="append", default=[],
                    help="only this bundle (folder name; repeatable)")
    ap.add_argument("--no-heatmaps", action="store_true")
    args = ap.parse_args(argv)
    bundles = [b for b in discover_bundles(args.models).bundles
               if "icdr_grade" in b.manifest.outputs
               and (not args.bundle or b.path.name in args.bundle)]
    print(f"{args.n} synthetic photos (seeds {args.seed}-{args.seed + args.n - 1}) + labelled "
          f"photos of {args.samples} per bundle\n")
    print("| bundle | photos | gradable | contradictions | heatmap != card grade | needs review "
          "| grade = truth | before issue 12: contradictions | heatmap != card | grade = truth "
          "| s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    failed = 0
    examples = []
    for bundle in bundles:
        start = time.perf_counter()
        predictor = Predictor(bundle, device="cpu")
        t = check(predictor, args.n, args.seed, args.samples, not args.no_heatmaps)
        failed += t.contradictions + t.heatmap_mismatch
        examples += [f"{bundle.name}: {e}" for e in t.examples[:5]]
        tag = " (demo)" if bundle.manifest.demo else ""
        print(f"| {bundle.name} {bundle.manifest.version}{tag} | {t.photos} | {t.gradable} | "
              f"{t.contradictions} | {t.heatmap_mismatch if not args.no_heatmaps else 'n/a'} | "
              f"{t.review} | {t.correct} | {t.old_contradictions} | {t.old_heatmap_mismatch} | "
              f"{t.old_correct} | {time.perf_counter() - start:.0f} |")
    for e in examples:
        print(f"- {e}")
    print(f"\n{'FAIL' if failed else 'OK'}: {failed} contradictions or heatmap mismatches.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
