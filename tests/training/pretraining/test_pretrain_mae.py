"""MAE pretraining (training.pretraining.pretrain_mae, training.pretraining.mae): masking and
loss, RETFound's checkpoint layout through the repo's own import path, exact resume, data
sources, --init, the figure CLI.

Everything runs a 2-block 64-d ViT on 64 px inputs (16 patches) for a few steps on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.archs.lora import RETFoundLoRA
from core.archs.retfound import build_retfound_vit, load_retfound_model
from core.bundle import build_bundle_model, load_bundle
from core.errors import ConfigError
from core.synthetic import generate_fundus
from tests.core.archs._tiny_ckpt import write_mae_checkpoint
from training.interchange.import_retfound import main as import_main
from training.pretraining.mae.config import load_mae_config
from training.pretraining.mae.data import UnlabelledFundus, build_crops, list_items
from training.pretraining.mae.engine import FINAL, LAST, Pretrainer, param_groups, scheduled_lr
from training.pretraining.mae.figure import load_mae
from training.pretraining.mae.figure import main as figure_main
from training.pretraining.mae.model import MaskedAutoencoderViT, build_mae, sincos_pos_embed
from training.pretraining.pretrain_mae import pretrain

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "training" / "configs" / "mae_tiny.yaml"
TINY = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=1,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1)
ENCODER_KEYS = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias"} | {
    f"blocks.{i}.{part}.{kind}" for i in range(2) for kind in ("weight", "bias")
    for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")}
DECODER_KEYS = {"mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias",
                "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight",
                "decoder_pred.bias"} | {
    f"decoder_blocks.0.{part}.{kind}" for kind in ("weight", "bias")
    for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")}


def tiny_overrides(out_dir: Path, *extra: str, sources=("synthetic:12",)) -> list[str]:
    src = "[" + ", ".join(f"'{s}'" for s in sources) + "]"
    return [f"out_dir={out_dir}", "model.size=test", "preprocessing.input_size=64",
            f"data.sources={src}", "data.synthetic_size=96", "data.cache_dir=null",
            "data.num_workers=0", "optim.batch_size=4", "optim.epochs=2",
            "optim.warmup_epochs=1", "optim.blr=0.05", "tensorboard=false", *extra]


def tiny_cfg(out_dir: Path, *extra: str, **kw):
    return load_mae_config(CONFIG, tiny_overrides(out_dir, *extra, **kw))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """One finished tiny run: its mae_pretrained.pth."""
    out = tmp_path_factory.mktemp("mae")
    trainer = pretrain(tiny_cfg(out, "run_name=base"), progress=False)
    return trainer.run_dir / FINAL


# ---------------------------------------------------------------------- model


def test_masking_keeps_a_quarter_of_each_sample_with_its_own_shuffle():
    x = torch.arange(4 * 64, dtype=torch.float32).reshape(4, 64, 1).expand(-1, -1, 8)
    kept, mask, ids_restore = MaskedAutoencoderViT.random_masking(
        x, 0.75, torch.Generator().manual_seed(0))
    assert kept.shape == (4, 16, 8)
    assert mask.sum(1).tolist() == [48.0] * 4
    assert len({tuple(m.tolist()) for m in mask}) == 4  # per-sample patterns
    for n in range(4):  # kept tokens are exactly the unmasked positions
        kept_pos = sorted(int(v) - 64 * n for v in kept[n, :, 0])
        assert kept_pos == torch.nonzero(mask[n] == 0).flatten().tolist()
    assert torch.equal(torch.argsort(torch.argsort(ids_restore, 1), 1), ids_restore)


def test_loss_counts_masked_patches_only_against_norm_pix_targets():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(**TINY, norm_pix_loss=True)
    imgs = torch.randn(2, 3, 64, 64)
    target = model.target(imgs)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(target.var(-1), torch.ones(2, 16), atol=1e-3)
    # per-patch affine changes of the pixels leave norm-pix targets unchanged
    shifted = model.unpatchify(model.patchify(imgs) * 3.0 + 2.0)
    assert torch.allclose(model.target(shifted), target, atol=1e-4)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    pred = target.clone()
    pred[:, 12:] += 100.0  # wrong only on visible patches: no loss
    assert model.forward_loss(imgs, pred, mask).item() == pytest.approx(0.0, abs=1e-8)
    pred = target.clone()
    pred[:, :12] += 1.0  # off by one on every masked value
    assert model.forward_loss(imgs, pred, mask).item() == pytest.approx(1.0, abs=1e-5)
    raw = MaskedAutoencoderViT(**TINY, norm_pix_loss=False)
    assert torch.equal(raw.target(imgs), raw.patchify(imgs))


def test_position_tables_are_maes_fixed_sincos():
    def mae_reference(dim, grid):  # facebookresearch/mae util/pos_embed.py, as published
        def one(d, pos):
            omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
            out = np.einsum("m,d->md", pos.reshape(-1), omega)
            return np.concatenate([np.sin(out), np.cos(out)], axis=1)
        g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32),
                                 np.arange(grid, dtype=np.float32)), 0).reshape(2, 1, grid, grid)
        emb = np.concatenate([one(dim // 2, g[0]), one(dim // 2, g[1])], axis=1)
        return np.concatenate([np.zeros([1, dim]), emb], axis=0)

    assert np.allclose(sincos_pos_embed(32, 4)[0].numpy(), mae_reference(32, 4), atol=1e-6)
    model = MaskedAutoencoderViT(**TINY)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    groups = param_groups(model, 0.05)
    no_decay = {id(p) for p in groups[1]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert {"cls_token", "mask_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= names
    assert not any(n.endswith("qkv.weight") or n == "decoder_pred.weight" for n in names)
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.05


def test_learning_rate_warms_up_then_follows_a_cosine(tmp_path):
    cfg = tiny_cfg(tmp_path, "optim.epochs=10", "optim.warmup_epochs=2", "optim.min_lr=0.0")
    assert scheduled_lr(cfg, 1.0, 0.0) == 0.0
    assert scheduled_lr(cfg, 1.0, 1.0) == pytest.approx(0.5)
    assert scheduled_lr(cfg, 1.0, 2.0) == pytest.approx(1.0)
    assert scheduled_lr(cfg, 1.0, 6.0) == pytest.approx(0.5)
    assert scheduled_lr(cfg, 1.0, 10.0) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------- checkpoint layout


def test_checkpoint_is_retfounds_layout_and_loads_through_the_import_path(pretrained, tmp_path):
    ckpt = torch.load(pretrained, map_location="cpu", weights_only=True)
    assert set(ckpt["model"]) == ENCODER_KEYS | DECODER_KEYS
    assert ckpt["epoch"] == 1 and ckpt["config"]["model"]["size"] == "test"
    assert ckpt["model"]["decoder_pred.weight"].shape == (16 * 16 * 3, 32)
    mae, _ = load_mae(pretrained)
    x = torch.randn(2, 3, 64, 64)
    vit = load_retfound_model(pretrained, num_classes=0, global_pool="token", img_size=64)
    with torch.no_grad():  # no masking: the CLS output is the plain ViT's, whatever the shuffle
        cls = mae.forward_encoder(x, 0.0)[0][:, 0]
        assert torch.allclose(vit.eval()(x), cls, atol=1e-5)
    avg = load_retfound_model(pretrained, num_classes=5, global_pool="avg", img_size=96)
    assert avg(torch.randn(1, 3, 96, 96)).shape == (1, 5)  # pos_embed resampled to 6x6
    assert import_main([str(pretrained), "--out", str(tmp_path / "enc"), "--img-size", "64"]) == 0
    bundle = load_bundle(tmp_path / "enc")
    assert bundle.manifest.architecture.kwargs["embed_dim"] == 64
    assert build_bundle_model(bundle)(x).shape == (2, 64)
    lora = RETFoundLoRA(pretrained, num_classes=5, lora_r=2, img_size=64)
    trainable, total, _ = lora.print_trainable_parameters()
    assert 0 < trainable < total and lora(x).shape == (2, 5)


def test_imported_own_encoder_names_its_photos_and_carries_no_retfound_licence(pretrained,
                                                                             tmp_path):
    """An encoder pretrained here is not RETFound's: no CC BY-NC, provenance = its sources, and
    the input size comes from the checkpoint; a tier trained from it inherits that."""
    from training.trainer.config import load_config
    from training.trainer.tiers import build_setup

    assert import_main([str(pretrained), "--out", str(tmp_path / "enc")]) == 0
    m = load_bundle(tmp_path / "enc").manifest
    assert m.license is None and m.preprocessing.input_size == 64
    assert "training.pretraining.pretrain_mae" in m.provenance.training_data
    assert "synthetic:" in m.provenance.training_data
    card = (tmp_path / "enc" / "MODEL_CARD.md").read_text()
    assert "not RETFound" in card and "CC BY-NC" not in card
    cfg = load_config(None, [f"model.checkpoint_path={tmp_path / 'enc'}", "model.tier=retfound",
                             "preprocessing.input_size=64"])
    assert build_setup(cfg).license is None


def test_run_writes_the_trainers_logs(pretrained):
    run = pretrained.parent
    history = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in history] == [0, 1]
    assert all(float(r["img_per_s"]) > 0 and float(r["lr"]) > 0 for r in history)
    steps = list(csv.DictReader(open(run / "steps.csv")))
    assert [int(r["step"]) for r in steps] == list(range(1, 7))  # 12 photos / 4 x 2 epochs
    for name in ("loss_curve.png", "config.yaml", "data_summary.json", LAST):
        assert (run / name).stat().st_size > 50, name
    torch.load(run / LAST, weights_only=True)  # plain tensors and dicts only


# ---------------------------------------------------------------------- resume


def _model_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_k_epochs_then_resume_equals_a_straight_run_bit_for_bit(tmp_path):
    straight = pretrain(tiny_cfg(tmp_path, "run_name=straight", "optim.epochs=3"), progress=False)
    # the interrupted run also uses a worker process and an on-disk crop cache: same numbers
    extra = ("run_name=split", "optim.epochs=3", "data.num_workers=1",
             f"data.cache_dir={tmp_path / 'cache'}")
    pretrain(tiny_cfg(tmp_path, *extra), stop_after=1, progress=False)
    assert not (tmp_path / "split" / FINAL).exists()
    torch.manual_seed(123)  # a different global RNG state: resume must restore it
    resumed = pretrain(tiny_cfg(tmp_path, *extra), resume=True, progress=False)
    a, b = _model_state(straight.run_dir / FINAL), _model_state(resumed.run_dir / FINAL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in straight.state.history] == [
        r["train_loss"] for r in resumed.state.history]
    lines = (tmp_path / "split" / "history.csv").read_text().strip().splitlines()
    assert len(lines) == 4  # header + 3 epochs, no duplicates after the resume
    with pytest.raises(ConfigError, match="optim.blr"):
        Pretrainer(tiny_cfg(tmp_path, *extra, "optim.blr=0.1"),
                   tmp_path / "split", progress=False).load_checkpoint()


# ---------------------------------------------------------------------- data


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def test_sources_mix_folders_csvs_zips_and_synthetic_and_skip_bad_files(tmp_path, capsys):
    photos = [generate_fundus(g, 40 + g, 96).image for g in range(5)]
    folder = tmp_path / "folder"
    _write(folder / "a.png", photos[0])
    _write(folder / "nested" / "b.jpg", photos[1])
    (folder / "nested" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not a photo")
    _write(tmp_path / "listed" / "imgs" / "c.png", photos[2])
    with open(tmp_path / "listed" / "list.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["image", "grade"], ["imgs/c.png", 0], ["imgs/gone.png", 1]])
    _, buf = cv2.imencode(".png", np.ascontiguousarray(photos[3][..., ::-1]))
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zf:
        zf.writestr("x/d.png", buf.tobytes())
        zf.writestr("x/readme.md", "skip me")
    sources = (str(folder), str(tmp_path / "listed" / "list.csv"), str(tmp_path / "photos.zip"),
               "synthetic:3:7")
    cfg = tiny_cfg(tmp_path, "run_name=data", "optim.batch_size=2", sources=sources)
    items, skipped = list_items(cfg)
    assert [i[0] for i in items] == ["file"] * 4 + ["zip"] + ["synthetic"] * 3
    assert skipped == {"listed in a CSV but missing": 1}
    crops = build_crops(items, cfg)
    summary = crops.summary(skipped)
    assert summary["photos"] == 7 and summary["skipped"] == 2
    assert summary["reasons"] == {"unreadable": 1, "listed in a CSV but missing": 1}
    assert any("broken.jpg" in k for k in crops.errors)
    again = build_crops(list_items(cfg)[0], cfg)  # synthetic photos are the same every time
    assert np.array_equal(again.images, crops.images)
    ds = UnlabelledFundus(crops, cfg)
    assert len(ds) == 7 and ds[(0, 0)].shape == (3, 64, 64)
    assert torch.equal(ds[(0, 3)], ds[(0, 3)]) and not torch.equal(ds[(0, 3)], ds[(1, 3)])
    trainer = Pretrainer(cfg, tmp_path / "data-run", progress=False)  # warns, does not crash
    assert "skipped 2 of 9 photos" in capsys.readouterr().out
    assert trainer.data_summary["photos"] == 7


def test_missing_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        list_items(tiny_cfg(tmp_path, sources=(str(tmp_path / "nowhere"),)))
    with pytest.raises(ConfigError, match="synthetic:N"):
        list_items(tiny_cfg(tmp_path, sources=("synthetic:many",)))


# ---------------------------------------------------------------------- --init and CLIs


def test_init_starts_from_a_retfound_layout_checkpoint(pretrained, tmp_path):
    trainer = Pretrainer(tiny_cfg(tmp_path, "run_name=dapt", f"model.init={pretrained}"),
                         tmp_path / "dapt", progress=False)
    source = _model_state(pretrained)
    own = trainer.model.state_dict()
    assert all(torch.equal(own[k], source[k]) for k in source)
    # RETFound's own file layout (args Namespace, optimizer, scaler) and an encoder-only file
    retfound = write_mae_checkpoint(tmp_path / "RETFound_like.pth", dict(source))
    with torch.serialization.safe_globals([argparse.Namespace]):
        assert isinstance(torch.load(retfound, weights_only=True)["args"], argparse.Namespace)
    model = build_mae(TINY, 64)
    assert model.load_init(retfound)[0].startswith("init: encoder and decoder")
    encoder_only = tmp_path / "encoder.pth"
    torch.save({"model": {k: v for k, v in source.items() if k in ENCODER_KEYS}}, encoder_only)
    notes = build_mae(TINY, 64).load_init(encoder_only)
    assert "decoder starts fresh" in notes[0]
    wider = build_retfound_vit(num_classes=0, global_pool="token", img_size=64, embed_dim=128,
                               depth=2, num_heads=2)
    torch.save({"model": wider.state_dict()}, tmp_path / "wider.pth")
    with pytest.raises(ConfigError, match="model.size"):
        build_mae(TINY, 64).load_init(tmp_path / "wider.pth")


def test_cli_runs_one_epoch_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "training.pretraining.pretrain_mae", "--config", str(CONFIG),
           "--no-progress", "--epochs", "1", "--device", "cpu", "--source", "synthetic:8"]
    for item in tiny_overrides(tmp_path, "run_name=cli", sources=("synthetic:8",)):
        if not item.startswith("data.sources"):
            cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MAE pretraining done" in proc.stdout and "img/s" in proc.stdout
    assert (tmp_path / "cli" / FINAL).is_file()
    assert len((tmp_path / "cli" / "history.csv").read_text().strip().splitlines()) == 2
    bad = subprocess.run(cmd[:3] + ["--set", "optim.nonsense=1"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "unknown key" in bad.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_model(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "training.pretraining.pretrain_mae", "--config", str(CONFIG), "--no-progress",
           "--epochs", "1"]
    for item in tiny_overrides(tmp_path, "run_name=ddp", f"data.cache_dir={tmp_path / 'c'}",
                               sources=("synthetic:16",)):
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("MAE pretraining done") == 1
    assert "2 steps of 4 x 2 process(es)" in proc.stdout
    assert set(_model_state(tmp_path / "ddp" / FINAL)) == ENCODER_KEYS | DECODER_KEYS


def test_figure_cli_draws_original_masked_and_reconstruction(pretrained, tmp_path, capsys):
    photo = _write(tmp_path / "photo.png", generate_fundus(2, 5, 128).image)
    out = tmp_path / "docs" / "mae_reconstruction.png"
    assert figure_main(["--checkpoint", str(pretrained), "--photos", str(photo),
                        "--synthetic", "1", "--out", str(out)]) == 0
    assert out.stat().st_size > 5000
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 300  # two rows of four panels
    # RETFound's own file layout (args Namespace; sizes read off the tensors) draws too
    retfound = write_mae_checkpoint(tmp_path / "RETFound_like.pth", dict(_model_state(pretrained)))
    model, arch = load_mae(retfound)
    assert arch["img_size"] == 64 and arch["norm_pix_loss"] is True
    assert figure_main(["--checkpoint", str(retfound), "--synthetic", "1", "--out",
                        str(tmp_path / "rf.png")]) == 0
    assert figure_main(["--checkpoint", str(tmp_path / "missing.pth"), "--synthetic", "1",
                        "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def _eyepacs_layout(root: Path, n_patients: int) -> Path:
    """Kaggle EyePACS names and trainLabels.csv over synthetic photos, both eyes per patient."""
    (root / "train").mkdir(parents=True)
    rows = []
    for i in range(2 * n_patients):
        name, grade = f"{10 + i // 2}_{'left' if i % 2 else 'right'}", (i // 2) % 5
        cv2.imwrite(str(root / "train" / f"{name}.jpeg"),
                    generate_fundus(grade, 500 + i, size=128).image[:, :, ::-1])
        rows.append(f"{name},{grade}\n")
    (root / "trainLabels.csv").write_text("image,level\n" + "".join(rows))
    return root / "trainLabels.csv"


def test_linear_probe_compares_pretrained_with_random_init(pretrained, tmp_path):
    from core.synthetic import write_aptos_dataset
    from training.pretraining.mae.probe import main as probe_main
    from training.pretraining.mae.probe import pretrained_label

    assert import_main([str(pretrained), "--out", str(tmp_path / "enc")]) == 0
    train = write_aptos_dataset(tmp_path / "syn-train", 20, seed=1, size=128)
    test = write_aptos_dataset(tmp_path / "syn-test", 15, seed=2, size=128)
    real = _eyepacs_layout(tmp_path / "eyepacs", 10)
    assert probe_main(["--encoder", str(tmp_path / "enc"), "--synthetic-train", str(train),
                       "--synthetic-test", str(test), "--real", str(real),
                       "--out", str(tmp_path / "probe")]) == 0
    result = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert result["synthetic"]["n_test"] == 15 and result["real"]["n_patients"] == 10
    auroc = result["real"]["referable_auroc"]
    mine = pretrained_label(json.loads((tmp_path / "enc" / "manifest.json").read_text())["name"])
    assert set(auroc) == {mine, "random init", "difference"}
    diff = auroc["difference"]
    assert diff["value"] == pytest.approx(auroc[mine]["value"]
                                          - auroc["random init"]["value"])
    assert diff["ci95"][0] <= diff["value"] <= diff["ci95"][1]
    kappa = result["synthetic"]["quadratic_kappa"][mine]
    assert -1 <= kappa["ci95"][0] <= kappa["value"] <= kappa["ci95"][1] <= 1
    probe_md = (tmp_path / "probe" / "probe.md").read_text()
    assert "| real referable AUROC" in probe_md and f"| probe | {mine} | random init |" in probe_md
    assert probe_main(["--encoder", str(tmp_path / "missing")]) == 2  # a clear error, no trace
