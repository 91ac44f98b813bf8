"""Old name of training.evaluation.multi_source, kept because
models/multisource-lite0/manifest.json records the command under it."""

import sys

from training.evaluation.multi_source import main

if __name__ == "__main__":
    sys.exit(main())
