#!/usr/bin/env bash
# Retrain the demo bundles shipped in models/ (synthetic data, plus the unlabelled real photos for MAE;
# CPU is enough: about two and a half hours on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m training.train_baseline --config training/configs/demo_baseline.yaml "$@"
# The ViT tiers start from an encoder MAE-pretrained here (about 46 min on 2 cores):
python -m training.pretraining.pretrain_mae --config training/configs/mae_demo.yaml
python -m training.interchange.import_retfound runs/mae-demo/mae_pretrained.pth --out models/mae-demo-encoder
# ...then feature distillation from demo-baseline on 4,000 synthetic + the EyePACS photos, unlabelled
# (about 50 min at 800 steps), the start of both ViT tiers since session 10:
python -m core.synthetic aptos data/synthetic-train4k --n 4000 --seed 0 --size 384 --workers 2
python -m training.pretraining.distill_encoder --teacher models/demo-baseline --student models/mae-demo-encoder \
    --photos data/synthetic-train4k/train_images --photos ../shared/realdata/eyepacs/train \
    --steps 800 --out models/distilled-demo-encoder
python -m training.train_retfound --config training/configs/demo_retfound.yaml "$@"
python -m training.train_lora --config training/configs/demo_lora.yaml "$@"
# Held-out synthetic test set, generated with another seed, for the figures in models/README.md:
python -m core.synthetic aptos data/synthetic-test --n 400 --seed 1234 --size 384 --workers 2
