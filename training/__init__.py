"""Everything behind the bundles: train, measure, pretrain, convert. Folders by job, imports one way.

common/       metrics, figures, provenance: imported by every job, import none of them
trainer/      one training run, config file to calibrated bundle (`python -m training.train_*`)
evaluation/   how a bundle or a recipe is measured: cross-validation, held-out and cross-dataset
              tables, paired comparisons, learning curves, operating rules, patient level, EyeQ
pretraining/  encoders for the ViT tiers: MAE pretraining (mae/), feature distillation
interchange/  weights in and out: RETFound .pth -> encoder bundle, bundle -> ONNX / TorchScript
tuning/       hyper-parameter search over the trainer (Optuna)

Imports run common <- trainer <- evaluation, pretraining <- interchange <- tuning (tests/
test_import_cycles.py). The modules at this level are one-line commands: the three trainers,
and the old names of commands that shipped bundles record in their manifests.
"""
