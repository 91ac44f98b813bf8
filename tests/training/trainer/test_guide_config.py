"""The guide's config files, `global_pool` booleans, `DRClassifier.from_config(config.model)`, and
the guide's HPO command line: accepted as written and mapped onto the project's own settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core.archs.baseline import DRClassifier
from core.archs.lora import RETFoundLoRA
from core.archs.retfound import (
    build_retfound_vit,
    global_pool_mode,
    load_retfound_model,
    read_retfound_checkpoint,
)
from core.bundle import load_bundle, read_weights
from core.errors import ConfigError
from tests.core.archs._tiny_ckpt import mae_state_dict, tiny_encoder, write_mae_checkpoint
from tests.training.conftest import tiny_overrides
from training.trainer import run
from training.trainer.config import Config, load_config
from training.trainer.guide_config import FROZEN_FOR_WHOLE_RUN
from training.tuning import hpo

CONFIGS = Path(__file__).resolve().parents[3] / "training" / "configs"

# The guide's three YAML examples, verbatim.
BASELINE_YAML = """\
model:
  name: resnet50            # timm model name
  num_classes: 5            # DR severity levels
  pretrained: true          # Use ImageNet weights
  dropout: 0.3              # Regularization
  freeze_backbone: false    # Whether to freeze backbone
"""
RETFOUND_YAML = """\
model:
  type: retfound
  checkpoint_path: models/RETFound_cfp_weights.pth
  num_classes: 5
  global_pool: false
  dropout: 0.3

training:
  learning_rate: 0.0001  # Lower LR for fine-tuning
  batch_size: 32
  num_epochs: 20
"""
LORA_YAML = """\
model:
  type: retfound_lora
  checkpoint_path: models/RETFound_cfp_weights.pth
  num_classes: 5
  lora_r: 8
  lora_alpha: 32
  lora_dropout: 0.1
  head_dropout: 0.3
  target_modules:
    - qkv

training:
  learning_rate: 0.0005  # 5x higher than full FT
  batch_size: 48         # Can use larger batch size
  num_epochs: 20
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- Config
def test_guide_files_read_with_attribute_access(tmp_path):
    base = Config.from_yaml(_write(tmp_path, "b.yaml", BASELINE_YAML))
    assert (base.model.name, base.model.num_classes, base.model.pretrained) == ("resnet50", 5, True)
    assert (base.model.dropout, base.model.freeze_backbone, base.model.type) == (0.3, False, None)
    assert dict(base.model) == {"name": "resnet50", "num_classes": 5, "pretrained": True,
                                "dropout": 0.3, "freeze_backbone": False}  # what the file sets
    ret = Config.from_yaml(_write(tmp_path, "r.yaml", RETFOUND_YAML))
    assert (ret.model.type, ret.model.global_pool, ret.model.tier) == ("retfound", False, "retfound")
    assert (ret.training.learning_rate, ret.training.batch_size, ret.training.num_epochs) == (
        1e-4, 32, 20)
    lora = Config.from_yaml(_write(tmp_path, "l.yaml", LORA_YAML))
    assert lora.model.target_modules == ("qkv",) and lora.model.lora_alpha == 32
    assert lora.training.learning_rate == 5e-4 and lora.model.tier == "lora"


@pytest.mark.parametrize("text,model,optim", [
    (BASELINE_YAML, {"tier": "baseline", "name": "resnet50", "pretrained": True,
                     "dropout_rate": 0.3}, {"freeze_epochs": 0}),
    (RETFOUND_YAML, {"tier": "retfound", "checkpoint_path": "models/RETFound_cfp_weights.pth",
                     "global_pool": "token", "drop_path_rate": 0.3},
     {"lr": 1e-4, "batch_size": 32, "epochs": 20}),
    (LORA_YAML, {"tier": "lora", "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.1,
                 "head_dropout": 0.3, "target_modules": ("qkv",)},
     {"lr": 5e-4, "batch_size": 48, "epochs": 20}),
])
def test_guide_files_map_onto_the_typed_config(tmp_path, text, model, optim):
    path = _write(tmp_path, "c.yaml", text)
    cfg = Config.from_yaml(path).to_train_config()
    assert {k: getattr(cfg.model, k) for k in model} == model
    assert {k: getattr(cfg.optim, k) for k in optim} == optim
    assert load_config(path) == cfg  # what the trainers and training.tuning.hpo read


def test_freeze_backbone_true_keeps_the_backbone_frozen_all_run(tmp_path):
    path = _write(tmp_path, "c.yaml", BASELINE_YAML.replace("freeze_backbone: false",
                                                            "freeze_backbone: true"))
    assert load_config(path).optim.freeze_epochs == FROZEN_FOR_WHOLE_RUN
    model = DRClassifier.from_config(
        dict(Config.from_yaml(path).model) | {"name": "resnet10t", "pretrained": False})
    assert model.get_num_params()[1] == model.num_features * 5 + 5


@pytest.mark.parametrize("text,needle", [
    ("model:\n  nme: resnet50\n", "'model': unknown key(s) ['nme']"),
    ("training:\n  lr: 0.1\n", "'training': unknown key(s) ['lr']"),
    ("model:\n  name: resnet50\nextra: 1\n", "unknown key(s) ['extra']"),
    ("model:\n  name: resnet50\n  lora_r: 8\n", "['lora_r'] do not apply to model type 'baseline'"),
    ("model:\n  type: retfound\n  name: resnet50\n", "['name'] do not apply"),
    ("model:\n  type: retfound\n  global_pool: cls\n", "model.global_pool"),
    ("model:\n  type: lora\n", "must be one of"),
    ("model:\n  tier: baseline\ntraining: {}\n", "project's own layout"),
])
def test_unknown_keys_are_refused_by_name(tmp_path, text, needle):
    path = _write(tmp_path, "c.yaml", text)
    with pytest.raises(ConfigError) as err:
        Config.from_yaml(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_project_sections_pass_through_and_double_settings_fail(tmp_path):
    text = RETFOUND_YAML + "data:\n  csv: data/aptos/train.csv\noptim:\n  weight_decay: 0.01\n"
    cfg = load_config(_write(tmp_path, "c.yaml", text), ["optim.epochs=3"])
    assert (cfg.data.csv, cfg.optim.weight_decay, cfg.optim.lr, cfg.optim.epochs) == (
        "data/aptos/train.csv", 0.01, 1e-4, 3)  # --set still wins
    with pytest.raises(ConfigError, match=r"optim\.lr set twice"):
        load_config(_write(tmp_path, "d.yaml", RETFOUND_YAML + "optim:\n  lr: 0.1\n"))
    with pytest.raises(ConfigError, match="5 DR grades"):
        load_config(_write(tmp_path, "e.yaml", BASELINE_YAML.replace("num_classes: 5",
                                                                     "num_classes: 3")))


@pytest.mark.parametrize("tier,text", [("baseline", BASELINE_YAML), ("retfound", RETFOUND_YAML),
                                       ("lora", LORA_YAML)])
def test_trainer_commands_accept_guide_files(tmp_path, monkeypatch, tier, text):
    seen = []
    monkeypatch.setattr(run, "run", lambda cfg, **_: seen.append(cfg) or SimpleNamespace(bundle=None))
    path = _write(tmp_path, "c.yaml", text)
    assert run.main(tier, ["--config", str(path), "--set", "data.csv=x.csv"]) == 0
    assert seen == [load_config(path, ["data.csv=x.csv"])] and seen[0].model.tier == tier


# ----------------------------------------------------------------------------- the Python API
def test_from_config_takes_the_guides_model_section(tmp_path):
    section = Config.from_dict({"model": {"name": "resnet10t", "pretrained": False,
                                          "dropout": 0.2, "num_classes": 3}}).model
    model = DRClassifier.from_config(section)
    assert (model.model_name, model.dropout.p, model.classifier.out_features) == ("resnet10t", 0.2, 3)
    with pytest.raises(ConfigError, match="either 'name' or 'model_name'"):
        DRClassifier.from_config({"name": "resnet10t", "model_name": "resnet10t"})
    with pytest.raises(ConfigError, match="RETFoundLoRA"):
        DRClassifier.from_config(Config.from_dict({"model": {"type": "retfound_lora"}}).model)


def test_global_pool_takes_retfounds_booleans_and_the_mode_names(tmp_path):
    path = write_mae_checkpoint(tmp_path / "r.pth", mae_state_dict(tiny_encoder()))
    assert (global_pool_mode(False), global_pool_mode(True)) == ("token", "avg")
    for flag, mode in ((False, "token"), (True, "avg"), ("token", "token"), ("avg", "avg")):
        model = load_retfound_model(path, num_classes=5, global_pool=flag, img_size=64)
        assert model.global_pool == mode and model.retfound_kwargs["global_pool"] == mode
    assert build_retfound_vit(global_pool=False, embed_dim=64, depth=1, num_heads=4,
                              img_size=64).global_pool == "token"
    lora = RETFoundLoRA(path, num_classes=5, global_pool=False, img_size=64)
    assert lora.vit.global_pool == "token"
    for bad in (0, 1, "cls", None):
        with pytest.raises(ConfigError, match="global_pool"):
            load_retfound_model(path, global_pool=bad, img_size=64)


# ----------------------------------------------------------------------------- HPO command line
def test_hpo_accepts_the_guides_command_line(monkeypatch):
    seen = {}

    def fake_study(config, overrides, **kwargs):
        seen.update(config=config, overrides=list(overrides), **kwargs)
        return SimpleNamespace(table="", study_dir=Path("s"), best_bundle=None)

    monkeypatch.setattr(hpo, "run_study", fake_study)
    argv = ["--checkpoint-path", "models/RETFound_cfp_weights.pth",
            "--data-csv", "data/aptos/train.csv", "--data-img-dir", "data/aptos/train_images",
            "--n-trials", "50", "--wandb"]
    assert hpo.main(argv) == 0
    assert seen["trials"] == 50
    cfg = load_config(seen["config"], seen["overrides"])
    assert cfg.model.checkpoint_path == "models/RETFound_cfp_weights.pth"
    assert (cfg.data.csv, cfg.data.images, cfg.wandb) == (
        "data/aptos/train.csv", "data/aptos/train_images", True)
    assert hpo.main([*argv, "--set", "data.csv=other.csv"]) == 0  # an explicit --set wins
    assert load_config(seen["config"], seen["overrides"]).data.csv == "other.csv"


def test_hpo_guide_command_runs_lora_over_a_retfound_pth(tmp_path, synthetic_aptos):
    """The guide's flags with a RETFound .pth: imported once as the LoRA base, one trial runs."""
    pth = write_mae_checkpoint(tmp_path / "RETFound_cfp_weights.pth", mae_state_dict(tiny_encoder()))
    tiny = [o for o in tiny_overrides(synthetic_aptos, tmp_path / "cache", tmp_path / "runs", "lora")
            if not o.startswith("data.csv=")]
    argv = ["--checkpoint-path", str(pth), "--data-csv", str(synthetic_aptos / "train.csv"),
            "--data-img-dir", str(synthetic_aptos / "train_images"), "--n-trials", "1",
            "--study", "g", "--no-progress", "--config", str(CONFIGS / "lora.yaml")]
    for item in [*tiny, "optim.epochs=1"]:
        argv += ["--set", item]
    assert hpo.main(argv) == 0
    study = tmp_path / "runs" / "g"
    base = load_bundle(study / "retfound-base")
    assert base.manifest.outputs == ("features",)
    best = load_bundle(study / "best_bundle")
    assert best.manifest.tier == "lora" and best.manifest.base_bundle == "retfound-base"
    key = "patch_embed.proj.weight"  # the base really is the .pth's encoder
    assert torch.equal(read_weights(base)[key], read_retfound_checkpoint(pth)[key])
