"""The quality gate against EyeQ's human quality labels (Fu et al., MICCAI 2019).

    python -m training.evaluation.eyeq_agreement ../shared/realdata/eyepacs [--out docs/eyeq_agreement.md]

Reads `eyeq_quality.csv` (image,quality: good / usable / reject) beside Kaggle's `train/`
folder, runs core.quality on each photo exactly as serving does (decode, field, assess), and
prints a table of our level against EyeQ's. The number that matters for safety is the corner
"EyeQ reject, ours good": a photo a human called ungradable that the dashboard would grade
with no warning. Our "usable" shows a needs-review flag; "reject" is not graded.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from core.errors import DRError
from core.images import decode_image
from core.preprocessing import find_fundus_field
from core.quality import assess

LEVELS = ("good", "usable", "reject")


@dataclass(frozen=True)
class Rated:
    image: str
    eyeq: str
    ours: str
    reasons: tuple[str, ...]


def rate_folder(root: Path, suffix: str = ".jpeg") -> list[Rated]:
    """Our level for every photo EyeQ rated (unreadable files are "reject", with the error)."""
    with (root / "eyeq_quality.csv").open(newline="", encoding="utf-8") as fh:
        labels = [(r["image"], r["quality"].strip().lower()) for r in csv.DictReader(fh)]
    out = []
    for image, eyeq in labels:
        try:
            rgb = decode_image(root / "train" / f"{image}{suffix}")
            report = assess(rgb, find_fundus_field(rgb))
            out.append(Rated(image, eyeq, report.level, tuple(report.reasons)))
        except DRError as exc:
            out.append(Rated(image, eyeq, "reject", (f"unreadable: {exc}",)))
    return out


def agreement_table(rated: list[Rated]) -> str:
    counts = Counter((r.eyeq, r.ours) for r in rated)
    lines = ["| EyeQ \\ ours | " + " | ".join(LEVELS) + " | total |", "|---" * 5 + "|"]
    for e in LEVELS:
        row = [counts[(e, o)] for o in LEVELS]
        lines.append(f"| {e} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    return "\n".join(lines) + "\n"


def silent(rated: list[Rated]) -> list[Rated]:
    """EyeQ-reject photos we would grade with no quality warning."""
    return [r for r in rated if r.eyeq == "reject" and r.ours == "good"]


def report(rated: list[Rated]) -> str:
    exact = sum(r.eyeq == r.ours for r in rated)
    rejects = [r for r in rated if r.eyeq == "reject"]
    lines = [f"# Quality gate against EyeQ ({len(rated)} photos)", "", agreement_table(rated),
             f"Exact agreement {exact}/{len(rated)}. EyeQ-reject photos graded without a "
             f"warning (ours good): {len(silent(rated))} of {len(rejects)}.", "",
             "EyeQ-reject photos, our verdict:", ""]
    lines += [f"- {r.image}: {r.ours}" + (f" ({'; '.join(r.reasons)})" if r.reasons else "")
              for r in rejects]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.eyeq_agreement",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder with eyeq_quality.csv and train/ (Kaggle layout)")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not (root / "eyeq_quality.csv").is_file():
        print(f"error: {root / 'eyeq_quality.csv'} not found", file=sys.stderr)
        return 2
    text = report(rate_folder(root))
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
