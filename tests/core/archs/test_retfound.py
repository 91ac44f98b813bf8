"""RETFound builder and checkpoint importer, on tiny checkpoints in the real layouts."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from core.archs.retfound import (
    build_retfound_vit,
    count_encoder_params,
    load_retfound_model,
    read_retfound_checkpoint,
    retfound_builder_kwargs,
    retfound_kwargs_from_state_dict,
)
from core.errors import CheckpointError, ConfigError
from tests.core.archs._tiny_ckpt import (
    EMBED,
    HEADS,
    IMG,
    PATCH,
    dinov2_teacher,
    mae_state_dict,
    tiny_dinov2_encoder,
    tiny_encoder,
    write_mae_checkpoint,
)

TINY = {"embed_dim": EMBED, "depth": 2, "num_heads": HEADS, "patch_size": PATCH, "img_size": IMG}


@pytest.fixture
def encoder():
    return tiny_encoder()


@pytest.fixture
def mae_ckpt(tmp_path, encoder):
    return write_mae_checkpoint(tmp_path / "RETFound_tiny.pth", mae_state_dict(encoder))


def _reference(encoder, pool: str, num_classes: int, img_size: int = IMG) -> nn.Module:
    """A timm-created ViT given the encoder tensors by hand (norm dropped in avg mode)."""
    ref = timm.create_model("vit_large_patch16_224", pretrained=False, embed_dim=EMBED, depth=2,
                            num_heads=HEADS, img_size=img_size, num_classes=num_classes,
                            global_pool=pool)
    state = encoder.state_dict()
    if pool == "avg":
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    result = ref.load_state_dict(state, strict=False)
    assert set(result.unexpected_keys) == set()
    return ref.eval()


def _copy_fresh(src: nn.Module, dst: nn.Module) -> None:
    """Give dst the freshly initialised head / fc_norm of src so logits are comparable."""
    with torch.no_grad():
        for name in ("head", "fc_norm"):
            for (_, p_dst), (_, p_src) in zip(getattr(dst, name).named_parameters(),
                                             getattr(src, name).named_parameters(), strict=True):
                p_dst.copy_(p_src)


@pytest.mark.parametrize("pool", ["avg", "token"])
@pytest.mark.parametrize("with_args", [True, False])
def test_mae_checkpoint_loads_and_matches_reference(tmp_path, encoder, pool, with_args):
    path = write_mae_checkpoint(tmp_path / "w.pth", mae_state_dict(encoder), with_args=with_args)
    model = load_retfound_model(path, num_classes=5, global_pool=pool, img_size=IMG,
                                num_heads=HEADS).eval()
    ref = _reference(encoder, pool, 5)
    _copy_fresh(model, ref)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-6)
    if pool == "avg":
        assert isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.LayerNorm)
    else:
        assert isinstance(model.fc_norm, nn.Identity)
        assert torch.equal(model.norm.weight, encoder.norm.weight)


def test_pooling_modes_give_different_features(mae_ckpt):
    x = torch.randn(1, 3, IMG, IMG)
    outs = [load_retfound_model(mae_ckpt, 0, pool, IMG, num_heads=HEADS).eval()(x)
            for pool in ("avg", "token")]
    assert not torch.allclose(outs[0], outs[1])


def test_head_is_reinitialised_small(mae_ckpt):
    model = load_retfound_model(mae_ckpt, num_classes=5, img_size=IMG, num_heads=HEADS)
    assert model.head.weight.shape == (5, EMBED)
    assert 0 < model.head.weight.abs().max() < 1e-4  # trunc_normal std 2e-5, truncated at 2
    assert torch.count_nonzero(model.head.bias) == 0


def test_num_classes_zero_returns_features(mae_ckpt):
    model = load_retfound_model(mae_ckpt, num_classes=0, img_size=IMG, num_heads=HEADS).eval()
    assert model(torch.randn(3, 3, IMG, IMG)).shape == (3, EMBED)


def test_default_num_heads_is_width_over_64(mae_ckpt):
    model = load_retfound_model(mae_ckpt, img_size=IMG)
    assert model.blocks[0].attn.num_heads == EMBED // 64


def test_pos_embed_resampled_bicubic_for_other_size(mae_ckpt, encoder):
    model = load_retfound_model(mae_ckpt, num_classes=0, img_size=96, num_heads=HEADS).eval()
    old = encoder.pos_embed.detach()
    grid_old, grid_new = IMG // PATCH, 96 // PATCH
    assert model.pos_embed.shape == (1, 1 + grid_new**2, EMBED)
    assert torch.equal(model.pos_embed[:, :1], old[:, :1])  # the CLS position is kept as is
    patches = old[:, 1:].reshape(1, grid_old, grid_old, EMBED).permute(0, 3, 1, 2)
    expected = F.interpolate(patches, size=(grid_new, grid_new), mode="bicubic",
                             align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, grid_new**2, EMBED)
    torch.testing.assert_close(model.pos_embed[:, 1:].detach(), expected, atol=1e-5, rtol=1e-5)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, EMBED)


def test_decoder_and_mask_token_dropped_by_reader(mae_ckpt, encoder):
    state = read_retfound_checkpoint(mae_ckpt)
    assert set(state) == set(encoder.state_dict())


@pytest.mark.parametrize("prefix", ["encoder.", "backbone.module."])
def test_wrong_prefix_fails_naming_keys(tmp_path, encoder, prefix):
    state = {prefix + k: v for k, v in mae_state_dict(encoder).items()}
    path = write_mae_checkpoint(tmp_path / "bad.pth", state)
    with pytest.raises(CheckpointError) as err:
        load_retfound_model(path, img_size=IMG, num_heads=HEADS)
    assert f"{prefix}blocks.1.attn.qkv.weight" in str(err.value)
    assert repr(prefix) in str(err.value)


def test_uniform_module_prefix_is_stripped(tmp_path, encoder):
    state = {"module." + k: v for k, v in mae_state_dict(encoder).items()}
    path = write_mae_checkpoint(tmp_path / "ddp.pth", state)
    model = load_retfound_model(path, num_classes=0, global_pool="token", img_size=IMG,
                                num_heads=HEADS)
    assert torch.equal(model.blocks[1].attn.qkv.weight, encoder.blocks[1].attn.qkv.weight)


def test_partial_module_prefix_fails(tmp_path, encoder):
    state = mae_state_dict(encoder)
    state["module.norm.weight"] = state.pop("norm.weight")
    path = write_mae_checkpoint(tmp_path / "half.pth", state)
    with pytest.raises(CheckpointError, match=r"module\.norm\.weight"):
        load_retfound_model(path, global_pool="token", img_size=IMG, num_heads=HEADS)


def test_missing_block_fails_naming_keys(tmp_path):
    state = mae_state_dict(tiny_encoder(depth=3))
    state = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    path = write_mae_checkpoint(tmp_path / "holes.pth", state)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.\*"):
        load_retfound_model(path, img_size=IMG, num_heads=HEADS)


def test_missing_single_tensor_fails_naming_it(tmp_path, encoder):
    state = mae_state_dict(encoder)
    del state["blocks.0.attn.proj.bias"]
    path = write_mae_checkpoint(tmp_path / "gap.pth", state)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.0\.attn\.proj\.bias"):
        load_retfound_model(path, img_size=IMG, num_heads=HEADS)


def test_token_mode_requires_norm(tmp_path, encoder):
    state = {k: v for k, v in mae_state_dict(encoder).items() if not k.startswith("norm.")}
    path = write_mae_checkpoint(tmp_path / "nonorm.pth", state)
    with pytest.raises(CheckpointError, match=r"norm\.weight"):
        load_retfound_model(path, global_pool="token", img_size=IMG, num_heads=HEADS)
    assert load_retfound_model(path, global_pool="avg", img_size=IMG, num_heads=HEADS)


def test_checkpoint_with_head_is_refused(tmp_path, encoder):
    state = mae_state_dict(encoder)
    state["head.weight"], state["head.bias"] = torch.zeros(5, EMBED), torch.zeros(5)
    path = write_mae_checkpoint(tmp_path / "finetuned.pth", state)
    with pytest.raises(CheckpointError, match=r"unexpected keys: head\.bias, head\.weight"):
        load_retfound_model(path, img_size=IMG, num_heads=HEADS)


def test_truncated_vit_l_depth_is_detected():
    state = {"patch_embed.proj.weight": torch.empty(1024, 3, 16, 16),
             "pos_embed": torch.empty(1, 197, 1024),
             "blocks.0.mlp.fc1.weight": torch.empty(4096, 1),
             "blocks.0.mlp.fc2.weight": torch.empty(1, 4096)}
    state.update({f"blocks.{i}.norm1.weight": torch.empty(1) for i in range(23)})
    with pytest.raises(CheckpointError, match=r"blocks\.23\.\*"):
        retfound_kwargs_from_state_dict(state)
    state["blocks.23.norm1.weight"] = torch.empty(1)
    kwargs = retfound_kwargs_from_state_dict(state)
    assert (kwargs["depth"], kwargs["num_heads"], kwargs["patch_size"]) == (24, 16, 16)


class _Payload:
    """Unpickling this calls open(marker, 'w'): a real code-execution payload, harmless here."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "args": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="Refused"):
        read_retfound_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is live when pickle is trusted
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_unreadable_file_is_checkpoint_error(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_retfound_checkpoint(path)


def test_missing_file_is_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_retfound_checkpoint(tmp_path / "nope.pth")


def test_bare_state_dict_pth_and_safetensors(tmp_path, encoder):
    state = encoder.state_dict()
    torch.save(state, tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bare.safetensors"))
    for name in ("bare.pth", "bare.safetensors"):
        loaded = read_retfound_checkpoint(tmp_path / name)
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_unknown_top_level_layout_is_refused(tmp_path):
    torch.save({"weights": {"a": torch.zeros(1)}, "epoch": 3}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="top-level keys"):
        read_retfound_checkpoint(tmp_path / "odd.pth")


@pytest.mark.parametrize("chunked", [False, True])
def test_dinov2_teacher_layout_loads(tmp_path, chunked):
    encoder = tiny_dinov2_encoder()
    torch.save({"teacher": dinov2_teacher(encoder, chunked), "iteration": 10}, tmp_path / "d.pth")
    model = load_retfound_model(tmp_path / "d.pth", num_classes=0, global_pool="token",
                                img_size=56, num_heads=HEADS).eval()
    assert model.retfound_kwargs["mlp"] == "swiglu_packed"
    assert model.retfound_kwargs["init_values"] is not None
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), encoder(x), rtol=0, atol=1e-6)


def test_dinov2_resampled_to_smaller_grid(tmp_path):
    encoder = tiny_dinov2_encoder()
    torch.save({"teacher": dinov2_teacher(encoder)}, tmp_path / "d.pth")
    model = load_retfound_model(tmp_path / "d.pth", num_classes=3, global_pool="token",
                                img_size=28, num_heads=HEADS)
    assert model.pos_embed.shape == (1, 1 + 2 * 2, EMBED)
    assert model(torch.randn(1, 3, 28, 28)).shape == (1, 3)


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_builder_matches_timm_vit_large_names(pool):
    ours = build_retfound_vit(global_pool=pool, **TINY)
    ref = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=5,
                            global_pool=pool, embed_dim=EMBED, depth=2, num_heads=HEADS,
                            img_size=IMG)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()}
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=0, atol=1e-6)


def test_builder_kwargs_round_trip(mae_ckpt):
    model = load_retfound_model(mae_ckpt, num_classes=4, img_size=IMG, num_heads=HEADS)
    kwargs = retfound_builder_kwargs(model)
    assert kwargs == model.retfound_kwargs
    rebuilt = build_retfound_vit(**kwargs)
    rebuilt.load_state_dict(copy.deepcopy(model.state_dict()), strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"global_pool": "max"}, {"img_size": 70}, {"num_heads": 5}, {"mlp": "relu"},
     {"num_classes": -1}],
)
def test_builder_rejects_bad_config(kwargs):
    with pytest.raises(ConfigError):
        build_retfound_vit(**{**TINY, **kwargs})


def test_count_encoder_params_excludes_head_only():
    model = build_retfound_vit(num_classes=7, **TINY)
    total = sum(p.numel() for p in model.parameters())
    assert count_encoder_params(model) == total - (EMBED * 7 + 7)


@pytest.mark.slow
def test_vit_large_parameter_counts(tmp_path):
    from core.archs.lora import LoRALinear, RETFoundLoRA

    with torch.no_grad():
        vit = build_retfound_vit()
        assert count_encoder_params(vit) == 303_301_632
        assert sum(p.numel() for p in vit.parameters()) == 303_306_757
        lora = RETFoundLoRA.from_model(vit, num_classes=5)
        lora_params = sum(m.lora_A.numel() + m.lora_B.numel()
                          for m in lora.modules() if isinstance(m, LoRALinear))
        assert lora_params == 786_432
        trainable, total, _ = lora.print_trainable_parameters()
        assert trainable == 786_432 + 5_125 + 2_048 == 793_605
        assert total == 303_306_757 + 786_432
        size = (lora.save_lora_adapters(tmp_path) / "adapter_model.safetensors").stat().st_size
        assert 793_605 * 4 <= size < 793_605 * 4 + 64_000
