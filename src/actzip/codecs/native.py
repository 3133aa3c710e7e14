"""The codecs' compiled decoder (kernels.c), reached through ctypes; None where it is not built.

The install builds `actzip.codecs.kernels` with the system C compiler, as it builds the runtime's
kernels. Without it (no compiler) `ctxrans` codes with its numba loops, the same streams at a
fraction of the speed, and `warn_if_missing` says so once. The decoder runs with AVX-512 where
the CPU has it (and `actzip.compiled` does not lower it), else in portable C.
"""

from __future__ import annotations

import ctypes
import functools
import warnings

from ..compiled import ISAS, chosen, extension
from ..errors import ActzipWarning

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class Chunk(ctypes.Structure):
    """One chunk to decode, as kernels.c's Chunk (its buffers padded as that says)."""

    _fields_ = [("words", _P), ("raw", _P), ("out", _P)] + [
        (n, _I64) for n in ("n_words", "raw_bits", "n", "x0", "y0")]


class Model(ctypes.Structure):
    """What every chunk of a stream shares, as kernels.c's Model."""

    _fields_ = [("table", _P), ("used", _P), ("symbol", _P), ("rings", _P), ("base", _P)] + [
        (n, _I64) for n in ("width", "height", "ring_size", "value_bytes", "is_signed", "bits")]


class EncodeChunk(ctypes.Structure):
    """One chunk to encode, as kernels.c's EncodeChunk."""

    _fields_ = [(n, _P) for n in ("values", "contexts", "symbols", "raw", "words")] + [
        (n, _I64) for n in ("n", "x0", "y0", "raw_bits", "first_word")]


class EncodeModel(ctypes.Structure):
    """What the chunks of a stream share while encoding, as kernels.c's EncodeModel."""

    _fields_ = [(n, _P) for n in ("symbol_of", "class_of", "raw_of", "enc", "counts")] + [
        (n, _I64) for n in ("width", "height", "value_bytes", "is_signed", "symbols")]


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded extension, or None where the install could not build it."""
    lib = extension(__package__)
    if lib is None:
        return None
    lib.actzip_ctxrans_decode.argtypes = [_P, _I64, _P, ctypes.c_int]
    lib.actzip_ctxrans_decode.restype = ctypes.c_int
    lib.actzip_ctxrans_table.argtypes = [_P, _I64, _I64, _P]
    lib.actzip_ctxrans_chunks.argtypes = [_P, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _P, _I64, _P]
    lib.actzip_ctxrans_chunks.restype = ctypes.c_int
    lib.actzip_ctxrans_first_pass.argtypes = lib.actzip_ctxrans_code.argtypes = [_P, _I64, _P]
    lib.actzip_ctxrans_code.restype = ctypes.c_int
    lib.actzip_ctxrans_payloads.argtypes = [_P, _I64, _P, _P]
    lib.actzip_ctxrans_payloads.restype = _I64
    return lib


def lanes() -> int:
    """How many chunks the decoder advances side by side."""
    return library().actzip_ctxrans_lanes()


def isa() -> int:
    """The index in `actzip.compiled.ISAS` of the instruction set the decoder runs with."""
    return ISAS.index(chosen(best_isa()))


@functools.cache
def best_isa() -> str:
    """The best instruction set this CPU offers the decoder, whatever the environment asks."""
    return ISAS[library().actzip_codec_best_isa()]


@functools.cache
def warn_if_missing() -> None:
    if library() is None:
        warnings.warn("actzip's compiled codec kernels are not built (no C compiler at install?): ctxrans "
                      "codes with its slower numba loops", ActzipWarning, stacklevel=3)
