"""MAE pretraining in RETFound's way (He et al. 2022; Zhou et al. 2023), for the ViT tiers.

config.py  typed config (YAML + --set), sizes from a ViT-Tiny to RETFound's ViT-L
model.py   the masked autoencoder; encoder = the RETFound tier's timm ViT, decoder = MAE's,
           every tensor under RETFound's checkpoint names
data.py    unlabelled photos from folders, CSVs, zips and the synthetic generator; fundus
           augmentations; a one-time crop cache
engine.py  the training loop: AdamW + warmup/cosine, bf16 on CUDA, DDP, exact resume, logs
figure.py  original | masked | reconstruction figure for any RETFound-layout MAE checkpoint

The command is ``python -m training.pretraining.pretrain_mae``; docs/mae.md has the details.
"""
