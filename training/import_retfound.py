"""Old name of training.interchange.import_retfound, kept because
models/mae-demo-encoder/manifest.json records the command under it."""

import sys

from training.interchange.import_retfound import main

if __name__ == "__main__":
    sys.exit(main())
