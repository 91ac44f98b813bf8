"""CPU grading on ONNX Runtime from a bundle's own verified ONNX graph.

Why: on a CPU, ONNX Runtime runs the shipped EfficientNet graph about 5x faster than PyTorch
eager (benchmarks/README.md, onnx_cpu.py), with the same logits to ~1e-6. The graph is part
of the bundle (manifest `onnx`: file, sha256, the weights it was exported from), written and
checked against PyTorch by training.interchange.export. Only the grade runs here; heatmaps need gradients
and stay on the PyTorch model, and so do GPU grading and bundles without a usable graph
(core.predict decides, and falls back with one log line naming the reason).

`OnnxGrader` is called like the PyTorch model (a normalised NCHW batch in, raw grade logits
out), so batching, temperature and the decision code are shared. Threads: ONNX Runtime's own
intra-op pool, sized once from torch's thread count when the session is made; no process-wide
setting (torch, OpenCV, environment) is touched.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch

from core.bundle import Bundle, base_of, tier_of
from core.errors import BundleError
from core.weights import sha256_file

ONNXRUNTIME = "onnxruntime"
PYTORCH = "pytorch"

log = logging.getLogger(__name__)


class OnnxGrader:
    """One ONNX Runtime session over a verified graph; thread-safe (sessions are)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # no busy-waiting between calls: the cores are shared with decoding workers and torch
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.nbytes = path.stat().st_size
        self.threads = options.intra_op_num_threads

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph, in its order, for a float32 NCHW batch."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Grade logits (the graph's first output) as fp32, like the PyTorch model's forward."""
        return torch.from_numpy(self.outputs(x.detach().cpu().numpy())[0]).float()

    def flip_averaged(self, x: torch.Tensor) -> torch.Tensor:
        """core.predict.flip_averaged_logits, with the batch and its mirror in one session call."""
        a = x.detach().cpu().numpy()
        both = self.outputs(np.concatenate([a, a[..., ::-1]]))[0].astype(np.float32)
        n = len(a)
        return (torch.from_numpy(both[:n]) + torch.from_numpy(both[n:])) / 2


def graph_path(bundle: Bundle) -> Path | None:
    spec = bundle.manifest.onnx
    return None if spec is None else bundle.path / spec.file


def load_grader(bundle: Bundle, threads: int | None = None) -> OnnxGrader:
    """The bundle's graph in an ONNX Runtime session, after every check passed; a BundleError
    says why not (no graph, file missing, hash mismatch, stale weights, session failed)."""
    spec = bundle.manifest.onnx
    if spec is None:
        raise BundleError("the bundle carries no ONNX graph")
    path = bundle.path / spec.file
    if not path.is_file():
        raise BundleError(f"its ONNX graph {spec.file!r} is missing")
    if spec.weights_sha256 != bundle.manifest.weights.sha256:
        raise BundleError("its ONNX graph was exported from other weights than the bundle's")
    if tier_of(bundle).needs_base and spec.base_sha256 != base_of(bundle).manifest.weights.sha256:
        raise BundleError("its ONNX graph was exported over other base weights")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise BundleError(f"its ONNX graph's sha256 ({actual[:12]}...) is not the manifest's "
                          f"({spec.sha256[:12]}...)")
    try:
        return OnnxGrader(path, torch.get_num_threads() if threads is None else threads)
    except ImportError as exc:
        raise BundleError(f"onnxruntime is not installed ({exc})") from exc
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, ...)
        raise BundleError(f"ONNX Runtime could not load its graph ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


_told: set[tuple[str, str]] = set()
_told_lock = threading.Lock()


def tell_once(bundle: Bundle, reason: str, *, level: int = logging.WARNING) -> None:
    """One log line per bundle and reason for the process: grading goes on with PyTorch."""
    key = (bundle.key, reason)
    with _told_lock:
        if key in _told:
            return
        _told.add(key)
    log.log(level, "%s: grading with PyTorch on the CPU, not ONNX Runtime: %s", bundle.name,
            reason)
