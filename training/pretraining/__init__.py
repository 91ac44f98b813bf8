"""Encoders for the ViT tiers before any grade is seen.

mae/, pretrain_mae   masked-autoencoder pretraining as RETFound did (docs/mae.md)
distill_encoder      a CNN bundle's features distilled into a ViT encoder
Their checkpoints become encoder bundles through training.interchange.import_retfound.
"""
