"""Old name of training.pretraining.distill_encoder, kept because
models/distilled-demo-encoder/manifest.json records the command under it."""

import sys

from training.pretraining.distill_encoder import main

if __name__ == "__main__":
    sys.exit(main())
