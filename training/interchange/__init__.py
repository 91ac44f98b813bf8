"""Weights in and out of the bundle format.

import_retfound   a RETFound (or this project's MAE) .pth -> an encoder bundle, unpickled once,
                  safely (weights_only)
export            a bundle -> ONNX or TorchScript, checked against the PyTorch model
"""
