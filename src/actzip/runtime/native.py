"""The compiled kernels (kernels.c), reached through ctypes, and the instruction set they run with.

The install builds `actzip.runtime.kernels` with the system C compiler. Where it could not (no
compiler), `available()` is False, `warn_if_missing()` says so once, and callers run PyTorch instead.

The kernels split their rows between PyTorch's intra-op thread count (`torch.get_num_threads()`,
read at each call): the calling thread takes one share, a small pool of Python threads the others
(ctypes releases the GIL for the call). No OpenMP runtime is started, so the thread count a user set
is the one that runs. Work under WORK_PER_THREAD multiply-adds stays on the calling thread.

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
from concurrent.futures import ThreadPoolExecutor

import torch

from ..errors import ActzipWarning

ISAS = ("c", "avx2", "avx512")
WORK_PER_THREAD = 1 << 21  # multiply-adds below which a second thread costs more than it saves
TILE = 4  # pixels per register tile (kernels.c): thread shares start on a tile
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
    lib.actzip_rows_conv.argtypes = [_F] * 8 + [_I64] * 6 + [ctypes.c_float, ctypes.c_float, ctypes.c_int]
    lib.actzip_rows_conv.restype = ctypes.c_int
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


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="actzip-kernel")


def in_shares(run, rows: int, work: int) -> None:
    """run(begin, end) over [0, rows) in tile-aligned shares, one per thread (see the module doc)."""
    threads = max(1, min(torch.get_num_threads(), work // WORK_PER_THREAD, -(-rows // TILE)))
    step = -(-rows // threads // TILE) * TILE
    bounds = [(b, min(b + step, rows)) for b in range(0, rows, step)] if rows else [(0, 0)]
    others = [_pool(len(bounds) - 1).submit(run, *b) for b in bounds[1:]] if len(bounds) > 1 else []
    statuses = [run(*bounds[0])] + [f.result() for f in others]
    if any(statuses):
        raise ValueError("the compiled kernel refused its arguments (weight not padded to 16?)")


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
    level, slot = ISAS.index(isa()), lists_size(TILE, cin) * 4  # bytes of one tile's lists
    args = (x.data_ptr(), weight.data_ptr(), bias.data_ptr(), residual.data_ptr() if residual is not None else None,
            out.data_ptr())
    in_shares(lambda b, e: library().actzip_sparse_conv1x1(*args, lists.data_ptr() + b // TILE * slot, b, e, cin,
                                                           cout, weight.shape[1], lo, hi, level), p, p * cin * cout)
    return out


def packed_taps_weight(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (cout, cin, kh, kw) weight as the (kh * kw * cin, ldw) rows `rows_conv` reads, tap by tap,
    and its bias, zero-padded to ldw = cout rounded up to 16."""
    cout = weight.shape[0]
    return packed_weight(weight.detach().permute(0, 2, 3, 1).reshape(cout, -1, 1, 1), bias)


def rows_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, in_rows: torch.Tensor,
              taps: torch.Tensor, out_rows: torch.Tensor, lo: float = -float("inf"), hi: float = float("inf"),
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """The conv at the kept output pixels only, into `out` (see kernels.c: in_rows, taps and out_rows
    are int64 offsets in floats into x, x again, and out). `weight` and `bias` from
    `packed_taps_weight`; x is the zero-padded NHWC input (or kept rows), residual laid out as out.
    The offsets are the caller's to get right: they are not checked here, beyond their tensors."""
    cin = weight.shape[0] // taps.numel()
    for t in (x, weight, bias, out) + ((residual,) if residual is not None else ()):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError("rows_conv takes contiguous float32 tensors")
    for t in (in_rows, taps, out_rows):
        if t.dtype != torch.int64 or not t.is_contiguous():
            raise ValueError("rows_conv takes contiguous int64 offsets")
    if in_rows.numel() != out_rows.numel() or weight.shape[0] != taps.numel() * cin:
        raise ValueError("rows_conv: shapes do not match")
    level, rows, cout = ISAS.index(isa()), in_rows.numel(), out.shape[-1]
    args = (x.data_ptr(), weight.data_ptr(), bias.data_ptr(), residual.data_ptr() if residual is not None else None,
            out.data_ptr(), in_rows.data_ptr(), taps.data_ptr(), out_rows.data_ptr())
    in_shares(lambda b, e: library().actzip_rows_conv(*args, b, e, taps.numel(), cin, cout, weight.shape[1], lo, hi,
                                                      level), rows, rows * weight.shape[0] * cout)
    return out


def lists_size(pixels: int, cin: int) -> int:
    """int32 elements of the workspace `sparse_conv1x1` needs for `pixels` rows of `cin` channels."""
    return -(-pixels // 4) * 5 * (cin + 17)
