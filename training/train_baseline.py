"""Train the baseline tier: `python -m training.train_baseline --config training/configs/baseline.yaml`."""

import sys

from training.trainer.run import main

if __name__ == "__main__":
    sys.exit(main("baseline"))
