"""Explanations: right maps, fast path == plain pytorch-grad-cam, nothing leaks, threads."""

from __future__ import annotations

import copy
import threading

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import core.explain as explain_mod
from core.errors import ConfigError
from core.explain import (
    METHODS,
    Explanation,
    explain,
    model_lock,
    resolve_layer,
    suggest_layer,
)
from core.explain_vit import vit_reshape
from core.overlay import colorize, overlay

CAM_METHODS = [m for m in METHODS if m != "attention_rollout"]
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def tiny_cnn() -> nn.Module:
    """Two conv layers, a dropout head: small enough for ScoreCAM, dropout proves eval()."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 5),
    )


def tiny_vit(global_pool: str = "token") -> nn.Module:
    return VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4,
                             num_classes=5, global_pool=global_pool, dynamic_img_size=True)


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


def hook_count(model: nn.Module) -> int:
    return sum(len(getattr(m, d)) for m in model.modules() for d in HOOK_DICTS)


def plain_cam(model: nn.Module, x: torch.Tensor, layer: str, targets, reshape=None) -> np.ndarray:
    """pytorch-grad-cam used as shipped, on a copy whose weights all require grad."""
    ref = copy.deepcopy(model).eval()
    with GradCAM(model=ref, target_layers=[resolve_layer(ref, layer)],
                 reshape_transform=reshape) as cam:
        return cam(input_tensor=x, targets=targets)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cnn_methods_give_unit_maps_at_input_size(method: str) -> None:
    out = explain(tiny_cnn(), images(2, 32), method=method, layer="0")
    assert len(out) == 2 and all(isinstance(e, Explanation) for e in out)
    for e in out:
        assert e.heatmap.shape == (32, 32) and e.heatmap.dtype == np.float32
        assert 0.0 <= e.heatmap.min() and e.heatmap.max() <= 1.0 and e.heatmap.max() > 0.5
        assert e.raw_max > 0 and e.method == method and e.layer == "0"


@pytest.mark.parametrize("pool", ["token", "avg"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [64, 96])
def test_vit_methods_fold_the_grid_of_any_input_size(method: str, pool: str, size: int) -> None:
    out = explain(tiny_vit(pool), images(1, size), method=method, layer="blocks.1.norm1",
                  arch="vit")
    assert out[0].heatmap.shape == (size, size)
    assert out[0].heatmap.max() > 0.5 and out[0].heatmap.min() >= 0.0 and out[0].raw_max > 0


def test_vit_reshape_drops_prefix_and_keeps_positions() -> None:
    vit = tiny_vit()
    gh, gw = 4, 6  # a 64x96 input
    tokens = torch.zeros(1, 1 + gh * gw, 2)
    tokens[0, 0] = -1.0  # the class token must not appear in the grid
    for i in range(gh):
        for j in range(gw):
            tokens[0, 1 + i * gw + j] = torch.tensor([i, j], dtype=torch.float32)
    grid = vit_reshape(vit, (64, 96))(tokens)
    assert grid.shape == (1, 2, gh, gw)
    assert grid[0, 0, 3, 5] == 3 and grid[0, 1, 3, 5] == 5 and grid.min() >= 0
    assert explain(vit, torch.randn(1, 3, 64, 96), layer="blocks.0.norm1",
                   arch="vit")[0].heatmap.shape == (64, 96)


@pytest.mark.parametrize("arch", ["cnn", "vit"])
@pytest.mark.parametrize("target", [1, "referable"])
def test_fast_path_equals_plain_pytorch_grad_cam(arch: str, target) -> None:
    model, layer, x = (tiny_cnn(), "0", images(2, 32)) if arch == "cnn" else \
        (tiny_vit(), "blocks.1.norm1", images(2, 64))
    ours = explain(model, x, method="gradcam", target=target, layer=layer, arch=arch)
    targets = [explain_mod._ClassTarget(1) if target == 1 else explain_mod._ReferableTarget()
               for _ in range(2)]
    reshape = vit_reshape(model, (64, 64)) if arch == "vit" else None
    ref = plain_cam(model, x, layer, targets, reshape)
    for e, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(e.heatmap, r, atol=1e-4)


def test_predicted_target_is_the_argmax_and_other_targets_differ() -> None:
    model, x = tiny_cnn(), images(1, 32)
    with torch.no_grad():
        k = int(model.eval()(x).argmax())
    pred = explain(model, x, target="predicted", layer="0")[0]
    same = explain(model, x, target=k, layer="0")[0]
    other = explain(model, x, target=(k + 1) % 5, layer="0")[0]
    assert pred.target_class == k and pred.target == f"grade {k} (most probable)"
    assert np.array_equal(pred.heatmap, same.heatmap) and same.target == f"grade {k}"
    assert not np.array_equal(pred.heatmap, other.heatmap)
    ref = explain(model, x, target="referable", layer="0")[0]
    assert ref.target == "referable (grades 2-4)" and ref.target_class is None


def test_raw_max_keeps_strength_that_scaling_hides() -> None:
    model, x = tiny_cnn(), images(1, 32)
    weak = explain(model, x, target=2, layer="0")[0]
    with torch.no_grad():
        model[4].weight.mul_(3.0)
        model[4].bias.mul_(3.0)
    strong = explain(model, x, target=2, layer="0")[0]
    assert strong.raw_max == pytest.approx(3 * weak.raw_max, rel=1e-4)
    np.testing.assert_allclose(strong.heatmap, weak.heatmap, atol=1e-5)


def test_attention_rollout_math_shape_and_fused_flag_restored() -> None:
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                            num_classes=5, global_pool="token")
    x = images(1, 64)
    assert vit.blocks[0].attn.fused_attn is True
    e = explain(vit, x, method="attention_rollout", arch="vit")[0]
    assert vit.blocks[0].attn.fused_attn is True
    assert e.heatmap.shape == (64, 64) and e.target_class is None and "attn_drop" in e.layer
    captured = []  # expected value, from the attention weights captured independently
    vit.blocks[0].attn.fused_attn = False
    h = vit.blocks[0].attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        vit.eval()(x)
    h.remove()
    a = 0.5 * captured[0].mean(1) + 0.5 * torch.eye(17)
    a = a / a.sum(-1, keepdim=True)
    assert e.raw_max == pytest.approx(float(a[0, 0, 1:].max()), rel=1e-5)
    e2 = explain(vit, x, method="attention_rollout", arch="vit")[0]
    assert vit.blocks[0].attn.fused_attn is False  # an existing False stays False
    np.testing.assert_allclose(e2.heatmap, e.heatmap, atol=1e-6)


def test_avg_pool_rollout_differs_from_cls_row() -> None:
    vit = tiny_vit("token")
    x = images(1, 64)
    token = explain(vit, x, method="attention_rollout", arch="vit")[0]
    vit.global_pool = "avg"
    avg = explain(vit, x, method="attention_rollout", arch="vit")[0]
    assert not np.allclose(token.heatmap, avg.heatmap)


def test_swin_nhwc_stage_is_explained() -> None:
    swin = SwinTransformer(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
                           num_heads=(1, 2), num_classes=5)
    e = explain(swin, images(1, 64), layer="layers.-1", arch="swin")[0]
    assert e.heatmap.shape == (64, 64) and e.raw_max > 0 and e.layer == "layers.-1"


@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_no_grads_flags_modes_and_hooks_survive(method: str) -> None:
    model = tiny_cnn().train()
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.requires_grad_(i % 2 == 0)
    kept = torch.ones_like(params[0])
    params[0].grad = kept
    user_hook = model[4].register_forward_hook(lambda m, i, o: None)
    first = explain(model, images(1, 32), method=method, layer="0")[0]
    assert first.heatmap.shape == (32, 32)
    assert [p.requires_grad for p in params] == [i % 2 == 0 for i in range(len(params))]
    assert params[0].grad is kept and all(p.grad is None for p in params[1:])
    assert model.training and all(m.training for m in model.modules())
    assert hook_count(model) == 1  # only the user's own hook
    user_hook.remove()
    assert hook_count(model) == 0


def test_state_restored_when_the_call_raises() -> None:
    model = tiny_cnn().train()
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError):
        explain(model, torch.randn(1, 4, 32, 32), layer="0")  # 4 channels: conv fails mid-call
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training and hook_count(model) == 0
    with pytest.raises(ConfigError):
        explain(model, images(1, 32), target=7, layer="0")
    assert [p.requires_grad for p in model.parameters()] == flags and hook_count(model) == 0


def test_eval_mode_makes_dropout_models_deterministic() -> None:
    model = tiny_cnn().train()
    x = images(1, 32)
    maps = [explain(model, x, target=1, layer="0")[0].heatmap for _ in range(3)]
    assert all(np.array_equal(maps[0], m) for m in maps[1:])


def test_grad_checkpointing_is_off_during_the_call_and_restored() -> None:
    vit = tiny_vit()
    x = images(1, 64)
    plain = explain(vit, x, layer="blocks.1.norm1", arch="vit")[0]
    vit.set_grad_checkpointing(True)
    ckpt = explain(vit, x, layer="blocks.1.norm1", arch="vit")[0]
    assert vit.grad_checkpointing is True
    assert np.array_equal(plain.heatmap, ckpt.heatmap) and hook_count(vit) == 0


def test_works_inside_inference_mode_and_on_inference_tensors() -> None:
    model = tiny_cnn()
    with torch.inference_mode():
        x = images(1, 32)
        e = explain(model, x, layer="0")[0]
    assert e.raw_max > 0


def test_bad_requests_say_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_cnn()
    with pytest.raises(ConfigError, match="choose one of"):
        explain(model, images(1, 32), method="fullgrad", layer="0")
    with pytest.raises(ConfigError, match="no submodule"):
        explain(model, images(1, 32), layer="backbone.layer4")
    with pytest.raises(ConfigError, match="ViT"):
        explain(model, images(1, 32), method="attention_rollout", arch="cnn")
    with pytest.raises(ConfigError, match="target="):
        explain(model, images(1, 32), target="grade 2", layer="0")
    monkeypatch.setattr(explain_mod, "SCORECAM_MAX_CPU_PARAMS", 100)
    with pytest.raises(ConfigError, match="ScoreCAM"):
        explain(model, images(1, 32), method="scorecam", layer="0")


def test_layer_names_and_suggestions() -> None:
    import timm

    resnet = timm.create_model("resnet10t", num_classes=5, pretrained=False)
    assert suggest_layer(resnet) == "layer4.0"
    assert resolve_layer(resnet, "layer4.-1") is resnet.layer4[-1]
    assert suggest_layer(tiny_vit(), "vit") == "blocks.1.norm1"
    e = explain(resnet, images(1, 64))[0]
    assert e.layer == "layer4.0" and e.heatmap.shape == (64, 64)


def test_suggested_layer_keeps_a_lesion_scale_grid() -> None:
    """With the input size, the deepest stage with >= MIN_LESION_GRID cells across is chosen."""
    import timm

    from core.explain import MIN_LESION_GRID

    resnet = timm.create_model("resnet10t", num_classes=5, pretrained=False)
    assert suggest_layer(resnet, "cnn", 192) == "layer2"  # 24 cells; layer3 would give 12
    assert suggest_layer(resnet, "cnn", 384) == "layer3"  # 24 cells; layer4 would give 12
    assert suggest_layer(resnet, "cnn", 2048) == "layer4"
    assert suggest_layer(resnet, "cnn", 64) == "layer4.0"  # no stage fine enough: the default
    for size in (192, 224, 320, 384, 512):
        grid = _grid(resnet, suggest_layer(resnet, "cnn", size), size)
        assert MIN_LESION_GRID <= grid < 2 * MIN_LESION_GRID  # the next stage would be too coarse
    assert suggest_layer(tiny_vit(), "vit", 192) == "blocks.1.norm1"  # a ViT's grid is its patches


def _grid(model, layer: str, size: int) -> int:
    seen = {}

    def note(_module, _inputs, out) -> None:
        seen["shape"] = out.shape

    handle = resolve_layer(model, layer).register_forward_hook(note)
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    handle.remove()
    return seen["shape"][-1]


def test_model_lock_is_one_reentrant_lock_per_model() -> None:
    a, b = tiny_cnn(), tiny_cnn()
    assert model_lock(a) is model_lock(a) and model_lock(a) is not model_lock(b)
    with model_lock(a):  # re-entrant: explain under a held lock does not deadlock
        assert explain(a, images(1, 32), layer="0")[0].raw_max > 0


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_threads_sharing_one_model_get_the_sequential_maps(arch: str) -> None:
    model, layer, size = (tiny_cnn(), "0", 32) if arch == "cnn" else \
        (tiny_vit(), "blocks.1.norm1", 64)
    xs = [images(1, size) for _ in range(8)]
    expected = [explain(model, x, layer=layer, arch=arch)[0].heatmap for x in xs]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    done = threading.Event()

    def worker(i: int) -> None:
        try:
            results[i] = explain(model, xs[i], layer=layer, arch=arch)[0].heatmap
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def forwards() -> None:
        while not done.is_set():
            with model_lock(model), torch.no_grad():
                model(images(2, size))

    noise = [threading.Thread(target=forwards) for _ in range(2)]
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in noise + workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    done.set()
    for t in noise:
        t.join(timeout=60)
    assert not errors and len(results) == 8
    assert all(np.array_equal(results[i], expected[i]) for i in range(8))
    assert hook_count(model) == 0


def test_overlay_blends_between_photo_and_colour_map() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    heat = rng.random((8, 12)).astype(np.float32)
    out = overlay(image, heat)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(overlay(image, heat, alpha=0.0), image)
    big = cv2.resize(heat, (60, 40), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(overlay(image, heat, alpha=1.0), colorize(big, "jet"))
    assert not np.array_equal(out, image)
    assert not np.array_equal(overlay(image, heat, colormap="viridis"), out)
    for bad in (dict(alpha=1.5), dict(colormap="nope")):
        with pytest.raises(ValueError):
            overlay(image, heat, **bad)
    with pytest.raises(ValueError):
        overlay(image.astype(np.float32), heat)


def test_weighted_overlay_leaves_weak_regions_as_the_photo() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    heat = np.zeros((40, 60), np.float32)
    heat[10:20, 10:30] = 1.0
    out = overlay(image, heat, alpha=0.8, weighted=True)
    assert np.array_equal(out[heat == 0], image[heat == 0])  # untouched where the map is 0
    full = overlay(image, heat, alpha=0.8)
    assert np.array_equal(out[heat == 1], full[heat == 1])  # as the plain blend at the peak
    half = overlay(image, np.full((40, 60), 0.5, np.float32), alpha=0.8, weighted=True)
    plain_04 = overlay(image, np.full((40, 60), 0.5, np.float32), alpha=0.4)
    assert np.abs(half.astype(int) - plain_04.astype(int)).max() <= 1  # alpha scales with heat


def test_overlay_on_a_real_photo(fundus_samples_dir) -> None:
    path = next(p for p in sorted(fundus_samples_dir.iterdir()) if p.suffix == ".jpeg")
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    heat = explain(tiny_cnn(), images(1, 32), layer="0")[0].heatmap
    out = overlay(image, heat, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8


class _Backward(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        _Backward.calls += 1
        return grad


class _Spy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Backward.apply(x)


def test_backward_stops_at_the_target_layer() -> None:
    """The speed trick: nothing before the target activation is back-propagated."""
    cnn = tiny_cnn()
    model = nn.Sequential(_Spy(), cnn[0], *list(cnn)[1:])
    _Backward.calls = 0
    e = explain(model, images(1, 32), layer="1")[0]
    assert e.raw_max > 0 and _Backward.calls == 0
    x = images(1, 32).requires_grad_(True)  # the spy does record a backward when one passes it
    model(x).sum().backward()
    assert _Backward.calls == 1


def _cropped_field(side: int = 200) -> np.ndarray:
    """A cropped photo as preprocessing leaves it: a lit disc on black, dark vessels inside."""
    yy, xx = np.mgrid[:side, :side]
    disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (0.48 * side) ** 2
    img = np.zeros((side, side, 3), np.uint8)
    img[disc] = (180, 90, 40)
    img[side // 2 - 1: side // 2 + 2, side // 4: 3 * side // 4] = 0  # a black vessel is retina
    return img


def test_share_outside_field_tells_a_border_map_from_a_retina_map():
    from core.overlay import OFF_FIELD_WARN, share_outside_field

    cropped = _cropped_field()
    centre = np.zeros((50, 50), np.float32)  # maps come at model resolution, resized here
    centre[20:30, 20:30] = 1.0
    corners = np.zeros((50, 50), np.float32)
    corners[:6, :6] = corners[-6:, -6:] = 1.0
    vessel = np.zeros((200, 200), np.float32)
    vessel[99:102, 60:140] = 1.0
    assert share_outside_field(centre, cropped) < 0.05
    assert share_outside_field(corners, cropped) > 0.95
    assert share_outside_field(vessel, cropped) < 0.05
    uniform = share_outside_field(np.ones((50, 50), np.float32), cropped)
    # an even map weighs the area outside the field less its rim: 1 - pi (0.48 - 0.025)^2
    assert uniform == pytest.approx(1 - np.pi * 0.455 ** 2, abs=0.02)
    assert uniform < OFF_FIELD_WARN  # and is never called a border map
    large = _cropped_field(1200)  # measured on a reduced copy: the same share, quickly
    assert share_outside_field(np.ones((50, 50), np.float32), large) == pytest.approx(
        uniform, abs=0.02)
    assert share_outside_field(corners, large) > 0.95
    assert share_outside_field(np.zeros((50, 50), np.float32), cropped) == 0.0
