"""Convert a RETFound .pth checkpoint into a safetensors encoder bundle, once.

    python -m training.interchange.import_retfound RETFound_cfp_weights.pth --out models/retfound-cfp-encoder

This is the only place in the project where a .pth is read, with torch.load(weights_only=True)
(see core.archs.retfound.read_retfound_checkpoint). The bundle holds the encoder only
(outputs: ["features"]); the trainers start from it, the dashboard does not grade with it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from core.archs.retfound import checkpoint_metadata, load_retfound_model
from core.bundle import Bundle, save_bundle
from core.errors import DRError
from core.manifest import ArchitectureSpec, ExplanationSpec, Manifest, Provenance, WeightsSpec
from core.preprocessing import PreprocessSpec
from core.wording import RETFOUND_LICENSE_NOTICE
from training.common.provenance import git_commit, utc_now
from training.pretraining.mae.engine import FORMAT as MAE_FORMAT

LICENSE = "CC BY-NC 4.0 (RETFound weights: non-commercial use only)"


def import_retfound(checkpoint: str | Path, out: str | Path, *, name: str | None = None,
                    global_pool: str = "avg", img_size: int | None = None,
                    num_heads: int | None = None) -> Bundle:
    """Read the checkpoint safely and write an encoder bundle (features, no classifier head).

    A checkpoint written by this project's `training.pretraining.pretrain_mae` is not RETFound's: its
    bundle names the photos it was pretrained on and carries no RETFound licence.
    """
    meta = checkpoint_metadata(checkpoint)
    ours = meta.get("format") == MAE_FORMAT
    if img_size is None:
        img_size = int((meta.get("arch") or {}).get("img_size", 224)) if ours else 224
    model = load_retfound_model(checkpoint, num_classes=0, global_pool=global_pool,
                                img_size=img_size, num_heads=num_heads)
    kwargs = dict(model.retfound_kwargs)
    out = Path(out)
    origin = _own_pretraining(meta) if ours else _RETFOUND_ORIGIN
    manifest = Manifest(
        name=name or out.name, version="1.0", tier="retfound", created=utc_now(),
        git_commit=git_commit(),
        architecture=ArchitectureSpec("retfound_vit", kwargs),
        preprocessing=PreprocessSpec(input_size=img_size, interpolation="bicubic"),
        explanation=ExplanationSpec(f"blocks.{kwargs['depth'] - 1}.norm1", arch="vit"),
        weights=WeightsSpec("weights.safetensors", ""),
        provenance=Provenance(training_data=origin.training_data,
                              command="python -m training.interchange.import_retfound "
                                      f"{Path(checkpoint).name}"),
        demo=False, license=origin.license, outputs=("features",),
    )
    card = (f"# {manifest.name}\n\n{origin.card_intro} `{Path(checkpoint).name}` "
            f"({kwargs['embed_dim']}-d, {kwargs['depth']} blocks, global_pool={global_pool}).\n\n"
            "Encoder only: train a head with `python -m training.train_retfound` or "
            "`train_lora` before grading.\n\n" + origin.notice + "\n")
    return save_bundle(out, manifest, model.state_dict(), model_card=card)


@dataclass(frozen=True)
class _Origin:
    training_data: str
    license: str | None
    card_intro: str
    notice: str


_RETFOUND_ORIGIN = _Origin("RETFound self-supervised pretraining (see its paper)", LICENSE,
                           "RETFound encoder imported from", RETFOUND_LICENSE_NOTICE)


def _own_pretraining(meta: dict) -> _Origin:
    """Provenance of an encoder pretrained here: the photo sources and epochs of its run."""
    config = meta.get("config") or {}
    sources = ", ".join(str(s) for s in (config.get("data") or {}).get("sources", ())) or "?"
    epochs = int(meta.get("epoch", -1)) + 1
    data = (f"MAE pretraining by this project (training.pretraining.pretrain_mae, {epochs} epochs) on "
            f"unlabelled photos: {sources}")
    notice = "Pretrained by this project, not RETFound: no RETFound weights are in it."
    if "eyepacs" in sources.lower():
        notice += (" Its sources include EyePACS photos (Kaggle Diabetic Retinopathy Detection "
                   "2015): use under Kaggle's competition terms, non-commercial research and "
                   "education.")
    return _Origin(data, None, f"{data}. Imported from", notice)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="RETFound .pth (MAE or DINOv2 layout)")
    parser.add_argument("--out", required=True, help="bundle folder to write, e.g. models/retfound")
    parser.add_argument("--name", default=None)
    parser.add_argument("--global-pool", default="avg", choices=["avg", "token"])
    parser.add_argument("--img-size", type=int, default=None,
                        help="input size (default: the checkpoint's own if pretrained here, else 224)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads (not stored in checkpoints; default width/64)")
    args = parser.parse_args(argv)
    try:
        bundle = import_retfound(args.checkpoint, args.out, name=args.name,
                                 global_pool=args.global_pool, img_size=args.img_size,
                                 num_heads=args.num_heads)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {bundle.path} (sha256 {bundle.manifest.weights.sha256[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
