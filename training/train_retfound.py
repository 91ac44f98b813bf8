"""Train the retfound tier: `python -m training.train_retfound --config training/configs/retfound.yaml`."""

import sys

from training.trainer.run import main

if __name__ == "__main__":
    sys.exit(main("retfound"))
