"""import_retfound: a RETFound .pth becomes a safetensors encoder bundle, once, safely."""

from __future__ import annotations

import pickle

import torch

from core.bundle import build_bundle_model, load_bundle
from tests.core.archs._tiny_ckpt import mae_state_dict, tiny_encoder, write_mae_checkpoint
from training.interchange.import_retfound import main


def test_import_writes_an_encoder_bundle_with_the_same_features(tmp_path):
    encoder = tiny_encoder()
    ckpt = write_mae_checkpoint(tmp_path / "RETFound_tiny.pth", mae_state_dict(encoder))
    out = tmp_path / "models" / "retfound-tiny"
    assert main([str(ckpt), "--out", str(out), "--global-pool", "token", "--img-size", "64",
                 "--num-heads", "4"]) == 0
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.outputs == ("features",) and m.tier == "retfound" and "CC BY-NC" in m.license
    assert (out / "weights.safetensors").is_file() and not list(out.glob("*.pth"))
    model = build_bundle_model(bundle)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), encoder(x), atol=1e-5)


def test_import_refuses_a_code_executing_pickle(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists()
    assert "error:" in capsys.readouterr().err


def test_a_missing_file_is_called_missing_not_a_broken_download(tmp_path, capsys):
    # the README's command, run before the weights are downloaded, said "the download may be
    # truncated: download it again" about a file that was not there at all
    assert main([str(tmp_path / "RETFound_cfp_weights.pth"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "truncated" not in err
