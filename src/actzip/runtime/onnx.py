"""onnxruntime, the dense CPU engine users deploy with: a model exported to it and run from PyTorch.

`compile` runs a model here when this beats actzip's own compiled graph on the example, and the
runtime benchmarks time it as the baseline to beat. Both need the optional `runtime` extra.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import ActzipError


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnxruntime_session(model: nn.Module, example: torch.Tensor, spinning: bool = True):
    """`model` exported to ONNX and loaded in onnxruntime with every graph optimization and this
    process's PyTorch thread count (fixed from now on), as a function of a tensor returning a numpy
    array; any batch size runs. None without onnxruntime. `spinning=False` makes its idle worker
    threads sleep instead of spinning, so that they leave the cores to PyTorch's ops around it."""
    if not available():
        return None
    return session_from_bytes(export(model, example.contiguous()), spinning)


def export(model: nn.Module, example: torch.Tensor) -> bytes:
    """`model` as ONNX bytes, its input "x" and output "y", its batch dimension free."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buffer.getvalue()


class Session:
    """An onnxruntime session as a function of a tensor (a numpy array back), with its ONNX bytes."""

    def __init__(self, onnx: bytes, spinning: bool):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.onnx = onnx
        try:
            self.session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception classes derive from Exception alone
            raise ActzipError(f"onnxruntime cannot load this ONNX model: {str(e)[:200]}") from None

    def __call__(self, x: torch.Tensor):
        # numpy makes a channels_last input contiguous: torch's copy ran on its OpenMP workers, whose
        # spinning afterwards took the cores from onnxruntime's (2.7x slower Lite0 at batch 1, 2 threads)
        return self.session.run(None, {"x": np.ascontiguousarray(x.detach().numpy())})[0]


def session_from_bytes(onnx: bytes, spinning: bool = True) -> Session:
    """A session of an exported model (see `onnxruntime_session`); ActzipError without onnxruntime."""
    if not available():
        raise ActzipError("this model runs in onnxruntime: pip install 'actzip[runtime]'")
    return Session(onnx, spinning)
