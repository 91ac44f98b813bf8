"""training.pretraining.distill_encoder: a CNN grader's features distilled into a ViT encoder bundle that
the ViT tiers start from (issue 15's fallback), on tiny models built here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.bundle import build_bundle_model, load_bundle, read_weights
from core.errors import ConfigError
from core.preprocessing import PreprocessSpec
from tests.core.archs._tiny_ckpt import IMG, mae_state_dict, tiny_encoder, write_mae_checkpoint
from tests.training.conftest import save_tiny_baseline_bundle
from training.interchange.import_retfound import import_retfound
from training.pretraining.distill_encoder import DistillSettings, distill, main

FAST = DistillSettings(steps=40, batch_size=8, lr=2e-3, warmup_steps=5)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    """A tiny encoder bundle, a tiny CNN grader, and a folder of photos with two bad files."""
    from core.synthetic import write_aptos_dataset

    top = tmp_path_factory.mktemp("distil")
    ckpt = write_mae_checkpoint(top / "mae.pth", mae_state_dict(tiny_encoder()))
    import_retfound(ckpt, top / "encoder", img_size=IMG)
    save_tiny_baseline_bundle(top / "teacher", PreprocessSpec(input_size=IMG))
    photos = write_aptos_dataset(top / "photos", 16, seed=2, size=128) / "train_images"
    (photos / "notes.png").write_text("not a photo")
    (photos / "empty.jpg").write_bytes(b"")
    return {"encoder": top / "encoder", "teacher": top / "teacher", "photos": photos}


@pytest.fixture(scope="module")
def distilled(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "distilled-encoder"
    return distill(parts["teacher"], parts["encoder"], [parts["photos"]], out, FAST,
                   progress=lambda _: None, run_dir=out.parent / "run")


def test_the_student_learns_the_teachers_features(distilled):
    losses = [row["loss"] for row in distilled.history]
    assert len(losses) == FAST.steps // 10
    assert sum(losses[-2:]) / 2 < 0.7 * losses[0], losses
    assert distilled.photos == 16 and distilled.skipped == 2


def test_the_output_is_an_encoder_bundle_of_the_students_architecture(parts, distilled):
    start, out = load_bundle(parts["encoder"]), load_bundle(distilled.bundle.path)
    assert out.manifest.outputs == ("features",)
    assert out.manifest.architecture == start.manifest.architecture
    assert out.manifest.preprocessing == start.manifest.preprocessing
    before, after = read_weights(start), read_weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    features = build_bundle_model(out).eval()(torch.zeros(1, 3, IMG, IMG))
    assert features.shape == (1, start.manifest.architecture.kwargs["embed_dim"])


def test_its_provenance_names_teacher_start_and_photos_and_the_tier_starts_from_it(distilled,
                                                                                   parts):
    from training.trainer.config import load_config
    from training.trainer.finalize import start_note
    from training.trainer.tiers import build_setup

    made = distilled.bundle.manifest.provenance.training_data
    assert "feature distillation" in made and "teacher teacher@0.1" in made
    assert "into encoder encoder" in made and str(parts["photos"]) in made
    cfg = load_config(None, [f"model.checkpoint_path={distilled.bundle.path}",
                             "model.tier=retfound", f"preprocessing.input_size={IMG}"])
    assert made in start_note(cfg)  # the card's "Started from" line says which start was used
    vit = build_setup(cfg).model
    weights = read_weights(distilled.bundle)
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(vit.state_dict()[key], weights[key])


def test_an_encoder_is_no_teacher_and_a_grader_is_no_student(parts, tmp_path):
    for teacher, student, photos, message in (
            ("encoder", "encoder", parts["photos"], "encoder cannot be a teacher"),
            ("teacher", "teacher", parts["photos"], "an encoder bundle is needed"),
            ("teacher", "encoder", tmp_path / "nowhere", "not a folder")):
        with pytest.raises(ConfigError, match=message):
            distill(parts[teacher], parts[student], [photos], tmp_path / "out", FAST,
                    run_dir=tmp_path / "run")


def test_the_command_writes_the_bundle_and_its_loss_log(parts, tmp_path, capsys):
    out = tmp_path / "cli-encoder"
    code = main(["--teacher", str(parts["teacher"]), "--student", str(parts["encoder"]),
                 "--photos", str(parts["photos"]), "--out", str(out), "--steps", "10",
                 "--batch-size", "4", "--run-dir", str(tmp_path / "run")])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "manifest.json").is_file() and (out / "MODEL_CARD.md").is_file()
    log = (tmp_path / "run" / "distill_history.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr,img_per_s" and len(log) == 2  # header + step 10
    assert (tmp_path / "run" / "distill_loss.png").stat().st_size > 1000
    bad = main(["--teacher", str(parts["encoder"]), "--student", str(parts["encoder"]),
                "--photos", str(parts["photos"]), "--out", str(tmp_path / "x")])
    assert bad == 2
