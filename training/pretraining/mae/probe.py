"""Linear probe on frozen features: does MAE pretraining give the encoder anything to build on?

    python -m training.pretraining.mae.probe --encoder models/mae-demo-encoder --out runs/mae-probe

The same architecture twice, its weights frozen: as pretrained (the encoder bundle), and at
random initialisation (seed 0). One logistic regression (fixed settings, nothing tuned) on the
average-pooled features of each, on two tasks:
- synthetic ICDR grades: fit on the training photos (`--synthetic-train`, APTOS layout), scored
  on held-out ones generated with another seed (`--synthetic-test`): quadratic kappa, accuracy;
- real referable / not referable: patient-disjoint 5-fold cross-validation on the EyePACS
  photos beside the checkout (`--real`, Kaggle layout): out-of-fold AUROC.
Intervals: bootstrap over test photos (synthetic) or patients (real), 2,000 resamples, the
difference pretrained - random resampled paired. Grades are read only here; pretraining never
saw them (it did see the real photos themselves, unlabelled: say so beside these figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.archs.retfound import build_retfound_vit
from core.bundle import build_bundle_model, load_bundle
from core.errors import DRError
from core.preprocessing import PreprocessSpec, preprocess_file
from training.common.metrics import binary_auroc, cohen_kappa
from training.trainer.config import DataConfig
from training.trainer.datasets import LabelledImage, assign_folds, load_records

REPS = 2000
FOLDS = 5


def pretrained_label(name: str) -> str:
    """Column name for the bundle's own weights: its name, since not every encoder is MAE-only."""
    return f"pretrained ({name})"


def encoders(bundle_path: Path) -> dict[str, nn.Module]:
    """{"pretrained (<name>)": the bundle's encoder, "random init": the same architecture, seed 0}."""
    bundle = load_bundle(bundle_path)
    torch.manual_seed(0)
    random = build_retfound_vit(**bundle.manifest.architecture.kwargs)
    return {pretrained_label(bundle.manifest.name): build_bundle_model(bundle).eval(),
            "random init": random.eval()}


@torch.no_grad()
def features(model: nn.Module, paths: list[Path], spec: PreprocessSpec,
             batch: int = 32) -> np.ndarray:
    """Pooled encoder features per photo (N, D)."""
    out = []
    for i in range(0, len(paths), batch):
        x = torch.stack([preprocess_file(p, spec).tensor for p in paths[i:i + batch]])
        out.append(model(x).float().numpy())
    return np.concatenate(out)


def _probe() -> Callable:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return lambda: make_pipeline(StandardScaler(), LogisticRegression(
        C=0.1, max_iter=3000, class_weight="balanced"))


def synthetic_records(folder: Path) -> list[LabelledImage]:
    """APTOS layout (train.csv + train_images/) as written by core.synthetic."""
    records, _ = load_records(DataConfig(preset="aptos", csv=str(folder / "train.csv")))
    return records


def real_records(csv_path: Path) -> list[LabelledImage]:
    records, _ = load_records(DataConfig(preset="eyepacs", csv=str(csv_path)))
    return records


def _boot(groups: np.ndarray, metric: Callable[[np.ndarray], float | None],
          seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of metric(index array), resampling whole groups."""
    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in ids}
    values = []
    for _ in range(REPS):
        pick = rng.choice(ids, size=len(ids), replace=True)
        value = metric(np.concatenate([members[g] for g in pick]))
        if value is not None:
            values.append(value)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _summary(groups: np.ndarray, per_model: dict[str, Callable], names: list[str]) -> dict:
    """Point, interval per model, and the paired difference of the first minus the second."""
    everyone = np.arange(len(groups))
    out = {n: {"value": per_model[n](everyone), "ci95": _boot(groups, per_model[n])}
           for n in names}
    a, b = names

    def diff(idx: np.ndarray) -> float | None:
        x, y = per_model[a](idx), per_model[b](idx)
        return None if x is None or y is None else x - y

    out["difference"] = {"value": diff(everyone), "ci95": _boot(groups, diff)}
    return out


def synthetic_task(models: dict[str, nn.Module], spec: PreprocessSpec, train_dir: Path,
                   test_dir: Path) -> dict:
    train, test = synthetic_records(train_dir), synthetic_records(test_dir)
    y_train = np.array([r.grade for r in train])
    y_test = np.array([r.grade for r in test])
    kappa, accuracy = {}, {}
    for name, model in models.items():
        clf = _probe()().fit(features(model, [r.path for r in train], spec), y_train)
        pred = clf.predict(features(model, [r.path for r in test], spec))
        kappa[name] = lambda idx, p=pred: cohen_kappa(y_test[idx], p[idx], quadratic=True)
        accuracy[name] = lambda idx, p=pred: float((y_test[idx] == p[idx]).mean())
    names = list(models)
    groups = np.arange(len(test))
    return {"n_train": len(train), "n_test": len(test),
            "quadratic_kappa": _summary(groups, kappa, names),
            "accuracy": _summary(groups, accuracy, names)}


def real_task(models: dict[str, nn.Module], spec: PreprocessSpec, csv_path: Path) -> dict:
    records = real_records(csv_path)
    fold_of = assign_folds(records, FOLDS, seed=0)
    folds = np.array([fold_of[r.patient] for r in records])
    y = np.array([r.grade >= 2 for r in records])
    auroc = {}
    for name, model in models.items():
        x = features(model, [r.path for r in records], spec)
        oof = np.zeros(len(records))
        for k in range(FOLDS):
            test = folds == k
            clf = _probe()().fit(x[~test], y[~test])
            oof[test] = clf.predict_proba(x[test])[:, 1]
        auroc[name] = lambda idx, s=oof: binary_auroc(y[idx], s[idx])
    groups = np.array([r.patient for r in records])
    return {"n_photos": len(records), "n_patients": len(set(groups)),
            "n_referable": int(y.sum()), "referable_auroc": _summary(groups, auroc, list(models))}


def _cell(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['value']:.3f} ({lo:.3f} to {hi:.3f})"


def table(result: dict) -> str:
    names = [n for n in result["real"]["referable_auroc"] if n != "difference"]
    rows = [("synthetic grades, quadratic kappa (held-out)", result["synthetic"]["quadratic_kappa"]),
            ("synthetic grades, accuracy (held-out)", result["synthetic"]["accuracy"]),
            ("real referable AUROC (5-fold CV, out-of-fold)", result["real"]["referable_auroc"])]
    lines = [f"| probe | {' | '.join(names)} | difference |", "|---|---|---|---|"]
    lines += [f"| {label} | {' | '.join(_cell(m[n]) for n in names)} | {_cell(m['difference'])} |"
              for label, m in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", required=True, help="encoder bundle (training.interchange.import_retfound)")
    ap.add_argument("--synthetic-train", default="data/synthetic-train")
    ap.add_argument("--synthetic-test", default="data/synthetic-test")
    ap.add_argument("--real", default="../shared/realdata/eyepacs/trainLabels.csv")
    ap.add_argument("--out", default="runs/mae-probe")
    args = ap.parse_args(argv)
    try:
        bundle = load_bundle(args.encoder)
        spec = bundle.manifest.preprocessing
        models = encoders(Path(args.encoder))
        result = {"encoder": str(args.encoder),
                  "synthetic": synthetic_task(models, spec, Path(args.synthetic_train),
                                              Path(args.synthetic_test)),
                  "real": real_task(models, spec, Path(args.real))}
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=2))
    text = table(result)
    (out / "probe.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
