"""A user's own model: "package.module:factory" or "path/to/file.py:factory"."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from torch import nn

from ..errors import ActzipError


def _import(module_part: str):
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise ActzipError(f"model file {module_part!r} does not exist")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_part)
    except ImportError as e:
        raise ActzipError(f"cannot import {module_part!r} for the model: {e}") from None


def build(spec: str, **kwargs) -> nn.Module:
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr:
        raise ActzipError(f"a custom model is given as package.module:factory, got {spec!r}")
    factory = getattr(_import(module_part), attr, None)
    if not callable(factory):
        raise ActzipError(f"{spec!r} names nothing callable")
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's code: report, don't crash with its traceback
        raise ActzipError(f"{spec} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ActzipError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
