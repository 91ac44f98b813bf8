"""Train the lora tier: `python -m training.train_lora --config training/configs/lora.yaml`."""

import sys

from training.trainer.run import main

if __name__ == "__main__":
    sys.exit(main("lora"))
