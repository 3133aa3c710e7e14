"""The compiled kernels (kernels.c), reached through ctypes, and the instruction set they run with.

The install builds `actzip.runtime.kernels` with the system C compiler. Where it could not (no
compiler), `available()` is False, `warn_if_missing()` says so once, and callers run PyTorch instead.

The instruction set is this CPU's best (AVX-512F, else AVX2 + FMA, else portable C), lowered by
`ATEN_CPU_CAPABILITY` like PyTorch's own kernels (`default`: portable C, `avx2`: AVX2), so one
setting tests both libraries' slower paths, and by `ACTZIP_ISA` (`c`, `avx2`, `avx512`) alone.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import warnings

import torch

from ..errors import ActzipWarning

ISAS = ("c", "avx2", "avx512")
_LOWERED_BY_TORCH = {"default": "c", "avx2": "avx2"}
_F = ctypes.c_void_p
_I64 = ctypes.c_int64


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded extension, or None where the install could not build it."""
    spec = importlib.util.find_spec(__package__ + ".kernels")
    if spec is None or not spec.origin or not spec.origin.endswith(".so"):
        return None
    lib = ctypes.CDLL(spec.origin)
    lib.actzip_sparse_conv1x1.argtypes = [_F, _F, _F, _F, _F, _F, _I64, _I64, _I64, _I64, _I64, ctypes.c_float,
                                          ctypes.c_float, ctypes.c_int]
    lib.actzip_sparse_conv1x1.restype = ctypes.c_int
    lib.actzip_best_isa.restype = ctypes.c_int
    return lib


def available() -> bool:
    return library() is not None


def warn_if_missing() -> None:
    if not available():
        warnings.warn("actzip's compiled kernels are not built (no C compiler at install?): the runtime "
                      "falls back to PyTorch, and sparse-input convs run dense", ActzipWarning, stacklevel=3)


def isa() -> str:
    """The instruction set the kernels run with here (see the module doc)."""
    lib = library()
    if lib is None:
        return "none"
    best = lib.actzip_best_isa()
    for cap in (_LOWERED_BY_TORCH.get(os.environ.get("ATEN_CPU_CAPABILITY", "")), os.environ.get("ACTZIP_ISA")):
        if cap in ISAS:
            best = min(best, ISAS.index(cap))
    return ISAS[best]


def packed_weight(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 conv's (cout, cin, 1, 1) weight as the (cin, ldw) rows the kernel reads, and its bias,
    both zero-padded to ldw = cout rounded up to 16 (the kernel loads whole vectors)."""
    cout, cin = weight.shape[:2]
    ldw = -(-cout // 16) * 16
    w = torch.zeros(cin, ldw)
    w[:, :cout] = weight.detach().reshape(cout, cin).t()
    b = torch.zeros(ldw)
    b[:cout] = bias.detach()
    return w, b


def sparse_conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                   lists: torch.Tensor, lo: float = -float("inf"), hi: float = float("inf"),
                   residual: torch.Tensor | None = None) -> torch.Tensor:
    """out (P, cout) = clamp(x (P, cin) @ weight + bias (+ residual), lo, hi), skipping x's zeros.

    `weight` and `bias` come from `packed_weight`; `lists` is an int32 workspace of at least
    `lists_size(P, cin)` elements. Every tensor is float32, contiguous, on the CPU."""
    p, cin = x.shape
    cout = out.shape[1]
    for t in (x, weight, bias, out) + ((residual,) if residual is not None else ()):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError("sparse_conv1x1 takes contiguous float32 tensors")
    if weight.shape[0] != cin or out.shape[0] != p or lists.numel() < lists_size(p, cin):
        raise ValueError("sparse_conv1x1: shapes do not match")
    if residual is not None and residual.shape != out.shape:
        raise ValueError("sparse_conv1x1: the residual must have the output's shape")
    status = library().actzip_sparse_conv1x1(
        x.data_ptr(), weight.data_ptr(), bias.data_ptr(), residual.data_ptr() if residual is not None else None,
        out.data_ptr(), lists.data_ptr(), 0, p, cin, cout, weight.shape[1], lo, hi, ISAS.index(isa()))
    if status:
        raise ValueError("sparse_conv1x1: the packed weight is not padded to a multiple of 16")
    return out


def lists_size(pixels: int, cin: int) -> int:
    """int32 elements of the workspace `sparse_conv1x1` needs for `pixels` rows of `cin` channels."""
    return -(-pixels // 4) * 5 * (cin + 17)
