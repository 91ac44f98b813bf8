"""Old name of training.evaluation.crossval, kept because
models/eyepacs-lite0/manifest.json records the command under it."""

import sys

from training.evaluation.crossval import main

if __name__ == "__main__":
    sys.exit(main())
