"""Hyper-parameter search (Optuna) over the trainer's one loop: `python -m training.tuning.hpo`."""
