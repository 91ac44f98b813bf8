"""LP-FT: start the new classifier head as a linear probe of the starting features
(`optim.head_init: linear_probe`; Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
Features").

Why: an MAE encoder's pooled features share a large constant part, and the signal lies in small
differences between photos. A head initialised at std 2e-5 (RETFound's) then needs hundreds of
steps before its logits mean anything, and meanwhile its noisy gradients reach the encoder. The
demo ViTs stayed at kappa 0 for 4-6 epochs that way. Here the head starts where a fitted
logistic regression (standardised features, C 0.1, class-balanced when the loss is) ends, so
fine-tuning starts from the probe's answer instead of from a constant.

The head is found, for any tier, as the last `nn.Linear` named `head` or `classifier` with one
output per grade; its input is captured with a forward pre-hook, so no tier needs a features
method. Every DDP rank fits the same probe on the same photos (lbfgs is deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.errors import ConfigError
from training.common.metrics import N_GRADES
from training.trainer.tiers import HEAD_MODULE_NAMES

PROBE_C = 0.1  # as training.pretraining.mae.probe: strong enough regularisation for ~200 photos x 1280 dims


@dataclass(frozen=True)
class ProbeStart:
    """What the card and the log say about the probe the head started from."""

    photos: int
    train_accuracy: float
    module: str


def classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, module) of the grade head. ConfigError when there is none to initialise."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == N_GRADES
             and set(HEAD_MODULE_NAMES) & set(name.split("."))]
    if not found:
        raise ConfigError("optim.head_init=linear_probe: no nn.Linear named head/classifier "
                          f"with {N_GRADES} outputs in this model; use optim.head_init=default")
    return found[-1]


@torch.no_grad()
def head_inputs(model: nn.Module, head: nn.Linear, loader: DataLoader,
                device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(features, grades): what the head receives for each photo, model in eval mode."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].float().cpu()))
    was_training = model.training
    model.eval()
    grades = []
    try:
        for x, y in loader:
            model(x.to(device))
            grades.append(y.numpy())
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).numpy(), np.concatenate(grades)


def fit_probe(features: np.ndarray, grades: np.ndarray,
              balanced: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(weight (5, d), bias (5,), training accuracy) of a multinomial logistic regression on
    standardised features, folded back so that it applies to the raw features."""
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(0)
    scale = features.std(0) + 1e-6
    z = (features - mean) / scale
    present = np.unique(grades)
    probe = LogisticRegression(C=PROBE_C, max_iter=3000,
                               class_weight="balanced" if balanced else None).fit(z, grades)
    weight = np.zeros((N_GRADES, features.shape[1]), dtype=np.float64)
    bias = np.full(N_GRADES, -10.0)  # a grade absent from the photos starts improbable
    coef, intercept = probe.coef_, probe.intercept_
    if len(present) == 2:  # sklearn's one row for two classes -> two rows, same softmax
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate(
            [-intercept / 2, intercept / 2])
    weight[present] = coef / scale
    bias[present] = intercept - weight[present] @ mean
    accuracy = float((probe.predict(z) == grades).mean())
    return weight.astype(np.float32), bias.astype(np.float32), accuracy


def init_head_from_probe(model: nn.Module, loader: DataLoader, device: torch.device,
                         balanced: bool) -> ProbeStart:
    """Fit the probe on `loader`'s photos (unaugmented) and copy it into the head."""
    name, head = classifier_head(model)
    features, grades = head_inputs(model, head, loader, device)
    if len(np.unique(grades)) < 2:
        raise ConfigError("optim.head_init=linear_probe needs photos of at least two grades")
    weight, bias, accuracy = fit_probe(features, grades, balanced)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        if head.bias is not None:
            head.bias.copy_(torch.from_numpy(bias))
    return ProbeStart(len(grades), accuracy, name)
