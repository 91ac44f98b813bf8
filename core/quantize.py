"""Dynamic int8 grading on the CPU for ViT tiers: Linear weights in int8, activations per call.

Why: on a 2-core CPU without AVX-512, RETFound ViT-L's fp32 forward sits at the machine's GEMM
roofline (123 GFLOP at ~116 GFLOP/s: about 1.05 s), above the 1 s target. int8 GEMMs (PyTorch's
x86/fbgemm kernels, AVX2) about halve it. Only the grade uses the int8 copy: explanations need
gradients and keep running on the fp32 model. The classifier head stays fp32, because the
bundle's temperature and thresholds were fitted on its logits. Opt-in (DR_CPU_INT8=1 or
Predictor(cpu_int8=True)); agreement with fp32 is measured in benchmarks/single_photo.py.
Where it applies it wins over ONNX Runtime (core.onnx_engine, fp32 graphs only): the grade
then comes from this int8 copy on PyTorch, and results record engine "pytorch", cpu_int8 True.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

EXCLUDED = ("head", "lora_")  # fp32: calibrated logits; LoRA tensors are swapped per request


def int8_targets(module: nn.Module) -> list[str]:
    """Names of the Linear layers an int8 copy quantizes (everything but the head)."""
    return [name for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and not any(part.startswith(EXCLUDED)
                                                    for part in name.split("."))]


def int8_copy(module: nn.Module) -> nn.Module:
    """A dynamically quantized deep copy; the original module is left untouched."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    spec = {name: default_dynamic_qconfig for name in int8_targets(module)}
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated upstream, still shipped
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(module, spec, dtype=torch.qint8, inplace=False).eval()


def int8_nbytes(fp32: nn.Module) -> int:
    """Memory of the int8 copy: packed int8 weights are invisible to .parameters()."""
    names = set(int8_targets(fp32))
    total = 0
    for name, m in fp32.named_modules():
        own = list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
        if name in names and isinstance(m, nn.Linear):
            total += m.weight.numel() + (m.bias.numel() * 4 if m.bias is not None else 0)
        else:
            total += sum(t.numel() * t.element_size() for t in own)
    return total


def is_quantized(module: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(m, DynamicLinear) for m in module.modules())
