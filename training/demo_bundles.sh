#!/usr/bin/env bash
# Retrain the three demo bundles shipped in models/ (synthetic data; CPU is enough: about an hour on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m training.train_baseline --config training/configs/demo_baseline.yaml "$@"
python -m training.train_retfound --config training/configs/demo_retfound.yaml "$@"
python -m training.train_lora --config training/configs/demo_lora.yaml "$@"
# Held-out synthetic test set, generated with another seed, for the figures in models/README.md:
python -m core.synthetic aptos data/synthetic-test --n 400 --seed 1234 --size 384 --workers 2
