"""Reading and writing one tensor as .npy, .pt (torch.save, loaded with weights_only=True) or
.safetensors; writes are atomic."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .errors import ActzipError
from .fileio import atomic_write

SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


def _suffix(path: Path) -> str:
    if path.suffix not in SUFFIXES:
        raise ActzipError(f"{path}: tensor files are {', '.join(SUFFIXES)}")
    return path.suffix


def read_tensor(path: str | Path, key: str | None = None) -> np.ndarray:
    """The tensor in `path`; for a file of several tensors, `key` picks one."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise ActzipError(f"{path} does not exist")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            tensors = obj if isinstance(obj, dict) else {"": obj}
    except Exception as e:  # each format reports damage its own way
        raise ActzipError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if key is None and len(tensors) != 1:
        raise ActzipError(f"{path} holds {len(tensors)} tensors; choose one with --key ({', '.join(list(tensors)[:5])})")
    if key is not None and key not in tensors:
        held = ", ".join(list(tensors)[:5]) if "" not in tensors else "one unnamed tensor (leave out --key)"
        raise ActzipError(f"{path} has no tensor {key!r}; it holds {held}")
    value = tensors[key] if key is not None else next(iter(tensors.values()))
    if isinstance(value, torch.Tensor):
        value = value.detach().float().numpy() if value.dtype == torch.bfloat16 else value.detach().numpy()
    if not isinstance(value, np.ndarray):
        raise ActzipError(f"{path} holds a {type(value).__name__}, not a tensor")
    return value


def write_tensor(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    suffix = _suffix(path)
    buf = io.BytesIO()
    if suffix == ".npy":
        np.save(buf, array, allow_pickle=False)
    elif suffix == ".safetensors":
        from safetensors.numpy import save

        buf.write(save({"tensor": np.ascontiguousarray(array)}))
    else:
        torch.save(torch.from_numpy(np.ascontiguousarray(array)), buf)
    atomic_write(path, buf.getvalue())
