"""Device choice and mixed precision, in one place so every caller agrees."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """cuda > mps > cpu for "auto"; an explicit name is honoured (and must exist)."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 where the GPU has it, fp16 otherwise; CPU runs in fp32 (exact, and not slower there)."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "mps":
        return torch.autocast("mps", dtype=torch.float16)
    return contextlib.nullcontext()
