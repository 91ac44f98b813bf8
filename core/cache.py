"""One thread-safe, memory-bounded cache of loaded models, shared by every browser session.

The cache is the one owner of loaded models: Predictors look their model up here on every use
and hold none, so its memory bound is the process's, and an evicted model is really freed.

Keyed by bundle identity (name, version, weights hash) and device. LoRA bundles over the same
base share one loaded "host" (the base encoder with LoRA layers installed); each adapter is a
few MB of tensors copied into the host under the host's lock before use, so three adapters over
ViT-L cost one ViT-L.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from core import settings
from core.bundle import Bundle, base_of, build_bundle_model, build_over_base, read_weights, tier_of
from core.devices import resolve_device
from core.explain import model_lock


def module_nbytes(module: nn.Module) -> int:
    """Bytes held by parameters and buffers (what a cached model costs in memory)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class LoadedModel:
    """A model ready to run. For LoRA, `module` is the shared host and `adapter` its tensors."""

    bundle: Bundle
    module: nn.Module
    device: torch.device
    adapter: dict[str, torch.Tensor] | None = None
    lock: threading.RLock = field(init=False)

    def __post_init__(self) -> None:
        self.lock = model_lock(self.module)

    @contextlib.contextmanager
    def use(self) -> Iterator[nn.Module]:
        """Hold the model's lock with this bundle's adapter active; every forward goes here."""
        with self.lock:
            if self.adapter is not None and getattr(self.module, "active_adapter", None) != self.bundle.key:
                self.module.load_state_dict(self.adapter, strict=False)
                self.module.active_adapter = self.bundle.key
            yield self.module


class ModelCache:
    """LRU over loaded modules, bounded by their parameter bytes."""

    def __init__(self, max_bytes: int | None = None) -> None:
        """max_bytes: the bound; default DR_MODEL_CACHE_MB (core.settings)."""
        if max_bytes is None:
            max_bytes = settings.current().model_cache_mb * 2**20
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}

    def get(self, bundle: Bundle, device: str = "auto") -> LoadedModel:
        dev = resolve_device(device)
        tier = tier_of(bundle)
        if not tier.needs_base:
            nhwc = dev.type == "cuda" and tier.channels_last(bundle.manifest.explanation.arch)
            module = self._get_or_load(
                ("model", bundle.key, str(dev)),
                lambda: _to_device(build_bundle_model(bundle), dev, channels_last=nhwc))
            return LoadedModel(bundle, module, dev)
        base = base_of(bundle)  # one host per base and share key; each bundle's adapter apart
        host_key = ("host", base.key, tier.share_key(bundle.path), str(dev))
        host = self._get_or_load(host_key, lambda: _to_device(build_over_base(base, bundle), dev))
        adapter = self._get_or_load(
            ("adapter", bundle.key, str(dev)),
            lambda: {k: v.to(dev) for k, v in
                     tier.adapter_state(bundle.path, read_weights(bundle), host).items()})
        return LoadedModel(bundle, host, dev, adapter)

    def get_int8(self, bundle: Bundle) -> LoadedModel:
        """A CPU int8 copy of a bundle's model (core.quantize; tiers with `int8`), cached beside fp32."""
        from core.quantize import int8_copy, int8_nbytes

        fp32 = self.get(bundle, "cpu")

        def load() -> nn.Module:
            with fp32.lock:  # never deep-copy a module while an explanation has hooks on it
                return int8_copy(fp32.module)

        module = self._get_or_load(("int8", bundle.key), load,
                                   size_of=lambda _m: int8_nbytes(fp32.module))
        return LoadedModel(bundle, module, fp32.device)

    def get_onnx(self, bundle: Bundle):
        """The bundle's verified ONNX graph in an ONNX Runtime session (core.onnx_engine),
        cached beside its PyTorch model; a BundleError says why it cannot be used."""
        from core.onnx_engine import load_grader

        return self._get_or_load(("onnx", bundle.key), lambda: load_grader(bundle),
                                 size_of=lambda grader: grader.nbytes)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def loaded_modules(self) -> list[nn.Module]:
        with self._lock:
            return [v for v, _ in self._entries.values() if isinstance(v, nn.Module)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _get_or_load(self, key: tuple, load, size_of=None):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one loader per key; others wait and then hit
            with self._lock:
                if key in self._entries:
                    return self._entries[key][0]
            try:
                value = load()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            if size_of is not None:
                size = size_of(value)
            elif isinstance(value, nn.Module):
                size = module_nbytes(value)
            else:
                size = sum(t.numel() * t.element_size() for t in value.values())
            with self._lock:
                self._entries[key] = (value, size)
                self._evict_locked(keep=key)
            return value

    def _evict_locked(self, keep: tuple) -> None:
        total = sum(size for _, size in self._entries.values())
        for old in list(self._entries):
            if total <= self.max_bytes:
                break
            if old != keep:
                total -= self._entries.pop(old)[1]


def _to_device(module: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    module = module.to(device).eval()
    return module.to(memory_format=torch.channels_last) if channels_last else module


_DEFAULT: ModelCache | None = None
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> ModelCache:
    """The process-wide cache (the dashboard wraps it in st.cache_resource)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ModelCache()
        return _DEFAULT
