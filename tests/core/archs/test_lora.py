"""Hand-written LoRA and the RETFound + LoRA tier, on a tiny ViT."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.archs.lora import LoRALinear, RETFoundLoRA, apply_lora, read_adapter_config
from core.archs.retfound import build_retfound_vit
from core.errors import BundleError, ConfigError
from tests.core.archs._tiny_ckpt import (
    EMBED,
    HEADS,
    IMG,
    mae_state_dict,
    tiny_encoder,
    write_mae_checkpoint,
)

DEPTH, R, CLASSES = 2, 4, 5


def _base(pool: str = "avg", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_retfound_vit(num_classes=CLASSES, global_pool=pool, img_size=IMG, patch_size=16,
                              embed_dim=EMBED, depth=DEPTH, num_heads=HEADS)


def _train(model: RETFoundLoRA, seed: int, steps: int = 3) -> None:
    """A few AdamW steps on random data, over the trainable parameters only."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, IMG, IMG, generator=gen)
        y = torch.randint(0, model.vit.head.out_features, (4,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@pytest.fixture
def x():
    return torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(7))


def test_lora_linear_init_and_math():
    base = nn.Linear(6, 9)
    lora = LoRALinear.from_linear(base, r=2, alpha=8, dropout=0.0)
    assert lora.weight is base.weight and lora.bias is base.bias
    assert torch.count_nonzero(lora.lora_B) == 0 and torch.count_nonzero(lora.lora_A) > 0
    x = torch.randn(5, 6)
    assert torch.equal(lora(x), base(x))
    with torch.no_grad():
        lora.lora_B.normal_()
    expected = base(x) + 4.0 * (x @ lora.lora_A.T @ lora.lora_B.T)
    torch.testing.assert_close(lora(x), expected)
    assert list(dict(lora.named_parameters())) == ["weight", "bias", "lora_A", "lora_B"]


def test_lora_linear_merge_unmerge_and_to_linear():
    lora = LoRALinear(6, 9, r=2, alpha=4)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(5, 6)
    before, plain = lora(x), lora.to_linear()
    assert type(plain) is nn.Linear
    torch.testing.assert_close(plain(x), before, atol=1e-5, rtol=0)
    original = lora.weight.detach().clone()
    lora.merge()
    assert lora.merged and not torch.equal(lora.weight, original)
    torch.testing.assert_close(lora(x), before, atol=1e-5, rtol=0)
    lora.unmerge()
    torch.testing.assert_close(lora.weight, original, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs", [{"r": 0}, {"r": 2.5}, {"alpha": 0}, {"dropout": 1.0},
                                    {"target_modules": ()}, {"target_modules": ("attn.qkv",)}])
def test_apply_lora_rejects_bad_config(kwargs):
    with pytest.raises(ConfigError):
        apply_lora(_base(), **kwargs)


def test_apply_lora_no_match_and_twice_fail():
    with pytest.raises(ConfigError, match="qkv"):
        apply_lora(_base(), target_modules=("query",))
    model = apply_lora(_base())
    with pytest.raises(ConfigError, match="already"):
        apply_lora(model)


@pytest.mark.parametrize("pool,norm", [("avg", "fc_norm"), ("token", "norm")])
def test_apply_lora_freezes_all_but_lora_head_norm(pool, norm):
    model = apply_lora(_base(pool), r=R)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"blocks.{i}.attn.qkv.lora_{m}" for i in range(DEPTH) for m in "AB"}
    expected |= {"head.weight", "head.bias", f"{norm}.weight", f"{norm}.bias"}
    assert trainable == expected
    assert "blocks.0.attn.qkv.weight" in model.state_dict()


def test_proj_target_wraps_attention_not_patch_embed():
    model = apply_lora(_base(), r=R, target_modules=("qkv", "proj"))
    assert isinstance(model.blocks[0].attn.proj, LoRALinear)
    assert isinstance(model.patch_embed.proj, nn.Conv2d)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 2 * DEPTH


def test_string_target_is_one_name():
    model = apply_lora(_base(), r=R, target_modules="proj")
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == DEPTH


def test_adapted_model_equals_base_at_init(x):
    base = _base().eval()
    ref = copy.deepcopy(base)
    model = RETFoundLoRA.from_model(base, CLASSES, lora_r=R).eval()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_training_changes_only_lora_head_norm():
    model = RETFoundLoRA.from_model(_base(), CLASSES, lora_r=R)
    before = {k: v.detach().clone() for k, v in model.vit.state_dict().items()}
    _train(model, seed=1)
    after = model.vit.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(model.lora_state_dict())
    assert any(k.endswith("lora_A") for k in changed) and "fc_norm.weight" in changed


def test_trainable_count_matches_formula(capsys):
    model = RETFoundLoRA.from_model(_base(), CLASSES, lora_r=R)
    trainable, total, pct = model.print_trainable_parameters()
    lora = DEPTH * R * (EMBED + 3 * EMBED)
    assert trainable == lora + (EMBED * CLASSES + CLASSES) + 2 * EMBED
    assert total == sum(p.numel() for p in _base().parameters()) + lora
    assert pct == pytest.approx(100 * trainable / total)
    assert f"{trainable:,}" in capsys.readouterr().out


def test_merge_and_unload_keeps_logits(x):
    model = RETFoundLoRA.from_model(_base(), CLASSES, lora_r=R, target_modules=("qkv", "proj"))
    _train(model, seed=2)
    with torch.no_grad():
        before = model(x)
        merged = model.merge_and_unload().eval()
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        torch.testing.assert_close(merged(x), before, atol=1e-5, rtol=0)
        assert torch.equal(model(x), before)  # the adapted model (shared base) is untouched
        inplace = model.merge_and_unload(inplace=True).eval()
        torch.testing.assert_close(inplace(x), before, atol=1e-5, rtol=0)


def test_adapters_save_reload_and_swap(tmp_path, x):
    base = _base()
    outs, dirs = {}, {}
    for name, seed in (("A", 3), ("B", 4)):
        model = RETFoundLoRA.from_model(copy.deepcopy(base), CLASSES, lora_r=R)
        _train(model, seed=seed)
        with torch.no_grad():
            outs[name] = model(x)
        dirs[name] = model.save_lora_adapters(tmp_path / name)
    assert not torch.allclose(outs["A"], outs["B"])
    served = RETFoundLoRA.from_model(copy.deepcopy(base), CLASSES, lora_r=R).eval()
    for name in ("A", "B", "A", "B"):
        served.load_lora_adapters(dirs[name])
        with torch.no_grad():
            assert torch.equal(served(x), outs[name])


def test_from_adapters_builds_with_saved_settings(tmp_path, x):
    base = _base()
    model = RETFoundLoRA.from_model(copy.deepcopy(base), 3, lora_r=2, lora_alpha=8,
                                    lora_dropout=0.0, head_dropout=0.1)
    _train(model, seed=5)
    model.save_lora_adapters(tmp_path)
    loaded = RETFoundLoRA.from_adapters(copy.deepcopy(base), tmp_path).eval()
    assert loaded.config == model.config and loaded.vit.head.out_features == 3
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_adapter_files(tmp_path):
    model = RETFoundLoRA.from_model(_base(), CLASSES, lora_r=R, lora_alpha=16)
    out = model.save_lora_adapters(tmp_path / "adapter")
    numel = sum(t.numel() for t in model.lora_state_dict().values())
    size = (out / "adapter_model.safetensors").stat().st_size
    assert numel * 4 <= size < numel * 4 + 16_000
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["alpha"], config["target_modules"]) == (R, 16.0, ["qkv"])
    assert (config["num_classes"], config["dropout"], config["head_dropout"]) == (CLASSES, 0.1, 0.3)
    assert config["base_model"]["kwargs"]["embed_dim"] == EMBED
    assert read_adapter_config(out) == config


@pytest.mark.parametrize(
    "field,kwargs", [("r", {"lora_r": 2}), ("alpha", {"lora_alpha": 8}),
                     ("num_classes", {"num_classes": 3}),
                     ("target_modules", {"target_modules": ("qkv", "proj")})],
)
def test_mismatched_adapter_config_names_field(tmp_path, field, kwargs):
    RETFoundLoRA.from_model(_base(), CLASSES, lora_r=R).save_lora_adapters(tmp_path)
    settings = {"num_classes": CLASSES, "lora_r": R, **kwargs}
    other = RETFoundLoRA.from_model(_base(), **settings)
    with pytest.raises(ConfigError, match=repr(field)):
        other.load_lora_adapters(tmp_path)


def test_adapter_for_other_base_is_refused(tmp_path):
    RETFoundLoRA.from_model(_base(), CLASSES, lora_r=R).save_lora_adapters(tmp_path)
    token = RETFoundLoRA.from_model(_base("token"), CLASSES, lora_r=R)
    with pytest.raises(ConfigError, match="global_pool"):
        token.load_lora_adapters(tmp_path)
    other_weights = RETFoundLoRA.from_model(_base(seed=9), CLASSES, lora_r=R)
    with pytest.raises(ConfigError, match="fingerprint"):
        other_weights.load_lora_adapters(tmp_path)


def test_broken_adapter_folder_is_bundle_error(tmp_path):
    model = RETFoundLoRA.from_model(_base(), CLASSES, lora_r=R)
    with pytest.raises(BundleError, match="missing"):
        model.load_lora_adapters(tmp_path / "absent")
    model.save_lora_adapters(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"junk")
    with pytest.raises(BundleError):
        model.load_lora_adapters(tmp_path)


def test_built_from_checkpoint(tmp_path, x):
    encoder = tiny_encoder()
    path = write_mae_checkpoint(tmp_path / "RETFound_tiny.pth", mae_state_dict(encoder))
    model = RETFoundLoRA(path, num_classes=CLASSES, lora_r=R, img_size=IMG).eval()
    assert torch.equal(model.vit.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)
    assert model(x).shape == (3, CLASSES)
    assert model.vit.head_drop.p == 0.3
    config = json.loads((model.save_lora_adapters(tmp_path / "a") / "adapter_config.json")
                        .read_text())
    assert config["base_model"]["checkpoint"] == "RETFound_tiny.pth"


def test_needs_checkpoint_or_model():
    with pytest.raises(ConfigError, match="checkpoint_path"):
        RETFoundLoRA(None, CLASSES)


def test_loading_adopts_adapter_dropouts(tmp_path):
    RETFoundLoRA.from_model(_base(), CLASSES, lora_r=R, lora_dropout=0.0,
                            head_dropout=0.1).save_lora_adapters(tmp_path)
    model = RETFoundLoRA.from_model(_base(), CLASSES, lora_r=R).eval()
    model.load_lora_adapters(tmp_path)
    assert (model.config["dropout"], model.config["head_dropout"]) == (0.0, 0.1)
    assert model.vit.head_drop.p == 0.1 and not model.vit.head_drop.training
    assert all(m.lora_dropout.p == 0.0 for m in model.modules() if isinstance(m, LoRALinear))
