"""What actzip's two compiled modules (runtime and codecs kernels) share: loading them, and the
instruction set they run with, the CPU's best lowered by the environment.

`ATEN_CPU_CAPABILITY` lowers it as it lowers PyTorch's own kernels (`default`: portable C, `avx2`:
AVX2), so one setting tests both libraries' slower paths; `ACTZIP_ISA` (`c`, `avx2`, `avx512`)
lowers actzip's alone. A setting never raises it above what the CPU runs.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os

ISAS = ("c", "avx2", "avx512")
_LOWERED_BY_TORCH = {"default": "c", "avx2": "avx2"}


def extension(package: str) -> ctypes.CDLL | None:
    """`package`.kernels loaded through ctypes, or None where the install could not build it (no
    compiler): callers then fall back, with a warning."""
    spec = importlib.util.find_spec(package + ".kernels")
    if spec is None or not spec.origin or not spec.origin.endswith(".so"):
        return None
    return ctypes.CDLL(spec.origin)


def chosen(best: str) -> str:
    """The instruction set to run, for a CPU whose best is `best` (one of ISAS)."""
    return _lowered(best, os.environ.get("ATEN_CPU_CAPABILITY", ""), os.environ.get("ACTZIP_ISA"))


@functools.cache
def _lowered(best: str, torch_capability: str, asked: str | None) -> str:
    """chosen() for these settings of the environment (cached: every kernel call asks)."""
    level = ISAS.index(best)
    for cap in (_LOWERED_BY_TORCH.get(torch_capability), asked):
        if cap in ISAS:
            level = min(level, ISAS.index(cap))
    return ISAS[level]
