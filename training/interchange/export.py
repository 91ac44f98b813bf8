"""`python -m training.interchange.export`: a grader bundle as an ONNX graph (or TorchScript),
checked against PyTorch; `--attach` writes it into the bundle, where the CPU grades with it.

The work lives in training.common.onnx_export, because training itself attaches the graph to
every bundle it writes, and training.trainer may not import this folder (tests/
test_import_cycles.py: one-way folders).
"""

import sys

from training.common.onnx_export import (  # noqa: F401  (the command's public names)
    ExportCheckError,
    attach_onnx,
    attach_or_warn,
    export_onnx,
    main,
)

if __name__ == "__main__":
    sys.exit(main())
