"""The codec interface (numcodecs-style), the stream header every codec shares, and the registry.

Every codec takes an integer array (uint8/uint16 for unsigned quantized activations, int8/int16 for
signed) and returns bytes that begin with the same small header:

    byte 0      dtype code (see DTYPES)
    byte 1      bit width b of the values (1..16; values must fit it)
    varint      number of values n (LEB128)

The lossless codecs (ChunkedCodec) continue with

    varints     the byte length of each chunk's payload, ceil(n / CHUNK) of them
    payloads    one per chunk of CHUNK values (the last may be shorter), each coded on its own

Chunks are coded independently (each chooses its own parameters: k, run field, tables), so they
are encoded and decoded in parallel: the kernels release the GIL. `decode` returns the 1-D array
a.ravel() with the original dtype. Decoders treat their input as hostile: every chunk's claimed
count is checked against its payload before anything is allocated, and every failure is a
CorruptStreamError.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from typing import ClassVar

import numpy as np

from ..errors import CorruptStreamError

DTYPES = {0: np.dtype(np.uint8), 1: np.dtype(np.int8), 2: np.dtype(np.uint16), 3: np.dtype(np.int16)}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
MAX_VALUES = 1 << 32  # no stream claims more values than this, whatever its payload
CHUNK = 1 << 18  # values per independently coded chunk
FREE_VALUES = 1 << 10  # a chunk may claim this many values; past it its payload must justify the count


@dataclass(frozen=True)
class Header:
    dtype: np.dtype
    bits: int
    n: int
    size: int  # header length in bytes

    @property
    def signed(self) -> bool:
        return self.dtype.kind == "i"


def write_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def read_varint(buf: bytes | memoryview, pos: int, what: str = "length") -> tuple[int, int]:
    """(value, next position); at most 10 bytes, so a hostile run of 0x80 cannot loop for long."""
    value = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise CorruptStreamError(f"stream truncated inside the {what}")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise CorruptStreamError(f"the {what} field is longer than 10 bytes")


def check_input(a, bits: int | None) -> tuple[np.ndarray, int]:
    """a as a contiguous 1-D array of a supported dtype, and the bit width its values must fit."""
    a = np.asarray(a)
    if a.dtype not in DTYPE_CODES:
        raise TypeError(f"codecs take uint8, int8, uint16 or int16 arrays, got {a.dtype}")
    width = a.dtype.itemsize * 8
    bits = width if bits is None else int(bits)
    if not 1 <= bits <= width:
        raise ValueError(f"bit width {bits} does not fit dtype {a.dtype} (1..{width})")
    a = np.ascontiguousarray(a).reshape(-1)
    if a.size:
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if a.dtype.kind == "i" else (0, (1 << bits) - 1)
        amin, amax = int(a.min()), int(a.max())
        if amin < lo or amax > hi:
            raise ValueError(f"values span [{amin}, {amax}], outside the {bits}-bit range [{lo}, {hi}]")
    return a, bits


def pack_header(a: np.ndarray, bits: int) -> bytes:
    return bytes([DTYPE_CODES[a.dtype], bits]) + write_varint(a.size)


def parse_header(buf: bytes | memoryview) -> Header:
    if len(buf) < 3:
        raise CorruptStreamError("stream shorter than its header")
    if buf[0] not in DTYPES:
        raise CorruptStreamError(f"unknown dtype code {buf[0]}")
    dtype = DTYPES[buf[0]]
    bits = buf[1]
    if not 1 <= bits <= dtype.itemsize * 8:
        raise CorruptStreamError(f"bit width {bits} does not fit dtype {dtype}")
    n, pos = read_varint(buf, 2, "value count")
    if n > MAX_VALUES:
        raise CorruptStreamError(f"stream claims {n} values, more than any stream holds")
    return Header(dtype, bits, n, pos)


def count_limit(payload_bits: int, values_per_bit: float) -> int:
    """The most values a chunk with this payload may claim (bounds every decoder's allocation)."""
    return max(FREE_VALUES, int(values_per_bit * payload_bits))


def check_count(header: Header, payload_bits: int, values_per_bit: float, codec: str) -> None:
    """Refuse a chunk whose value count its payload cannot hold, before allocating the output."""
    limit = count_limit(payload_bits, values_per_bit)
    if header.n > limit:
        raise CorruptStreamError(f"{codec}: a chunk claims {header.n} values, its {payload_bits}-bit payload "
                                 f"may hold at most {limit}")


_threads = [os.cpu_count() or 1]  # a list: set_threads changes it for every module


def threads() -> int:
    """How many threads the codecs share a stream's chunks between (see set_threads)."""
    return _threads[0]


def set_threads(n: int) -> None:
    """Let the codecs use n threads (default: one per core; 1 codes in the calling thread). As
    torch.set_num_threads, it holds for the whole process; the streams do not depend on it."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"codec threads must be a positive int, got {n!r}")
    _threads[0] = n


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="actzip-codec")


def parallel_map(fn, items: list) -> list:
    """fn over items on the codec thread pool (in this thread when there is only one item or thread).
    This thread takes the first item itself rather than wait idle: a hand-off to the pool costs
    tens of microseconds, as much as a short stream's whole share."""
    if len(items) <= 1 or threads() == 1:
        return [fn(x) for x in items]
    rest = [_pool(threads()).submit(fn, x) for x in items[1:]]
    return [fn(items[0])] + [f.result() for f in rest]


def zigzag(a: np.ndarray) -> np.ndarray:
    """Signed -> unsigned (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...) as uint32; unsigned input passes through."""
    if a.dtype.kind == "u":
        return a.astype(np.uint32)
    v = a.astype(np.int32)
    return ((v << 1) ^ (v >> 31)).astype(np.uint32)


def unzigzag(u: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of zigzag, into `dtype`."""
    if dtype.kind == "u":
        return u.astype(dtype)
    u = u.astype(np.int32)
    return ((u >> 1) ^ -(u & 1)).astype(dtype)


class Codec(ABC):
    """A codec for integer activation maps: `encode(ndarray) -> bytes`, `decode(bytes) -> ndarray`
    (1-D, the input's dtype). Parameters are constructor keywords that `get_config` returns."""

    codec_id: ClassVar[str]
    lossless: ClassVar[bool] = True

    def __init__(self, bits: int | None = None):
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, (int, np.integer))
                                 or not 1 <= bits <= 16):
            raise ValueError(f"a codec's bit width is an integer in 1..16 or None, got {str(bits)[:20]}")
        self.bits = None if bits is None else int(bits)

    @abstractmethod
    def encode(self, a_in) -> bytes: ...

    @abstractmethod
    def decode(self, buf) -> np.ndarray: ...

    def get_config(self) -> dict:
        return {"id": self.codec_id, **self._params()}

    def _params(self) -> dict:
        return {"bits": self.bits}

    def describe(self) -> dict:
        """The settings as a report shows them (get_config without bulky arrays)."""
        return self.get_config()

    @property
    def side_bytes(self) -> int:
        """What a decoder must hold besides the streams (a learned transform's basis), in bytes."""
        return 0

    @classmethod
    def from_config(cls, config: dict) -> "Codec":
        config = dict(config)
        config.pop("id", None)
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items() if v is not None)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.get_config().items())))


class LossyCodec(Codec):
    """A codec whose decode returns an approximation of its input: it also says what that will be
    without coding (`reconstruct`), which the lossy searches call many times, and may need side
    information held by the decoder (`side_bytes`, a learned transform)."""

    lossless: ClassVar[bool] = False

    @abstractmethod
    def reconstruct(self, a_in) -> np.ndarray:
        """decode(encode(a_in)) without the entropy coding: the same 1-D array, faster."""



def stream_bytes(buf) -> bytes:
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode takes bytes, got {type(buf).__name__}")
    return bytes(buf)


def split_chunks(buf: bytes, h: Header, pos: int, chunk: int, values_per_bit: float,
                 codec: str) -> list[tuple[Header, memoryview]]:
    """The (header, payload) of each chunk of `chunk` values, from the chunk sizes at buf[pos:];
    every claim is checked against its payload before anything is allocated. Payloads are views
    into buf, not copies."""
    n_chunks = -(-h.n // chunk)
    if n_chunks > len(buf) - pos:  # every chunk needs at least its one-byte size
        raise CorruptStreamError(f"{codec}: {h.n} values need {n_chunks} chunks, the stream is too short")
    sizes = []
    for _ in range(n_chunks):
        size, pos = read_varint(buf, pos, "chunk size")
        sizes.append(size)
    if pos + sum(sizes) != len(buf):
        raise CorruptStreamError(f"{codec}: chunk sizes do not add up to the stream length")
    jobs, view = [], memoryview(buf)
    for i, size in enumerate(sizes):
        sub = replace(h, n=min(chunk, h.n - i * chunk))
        check_count(sub, 8 * size, values_per_bit, codec)
        jobs.append((sub, view[pos:pos + size]))
        pos += size
    return jobs


def join_chunks(head: bytes, payloads: list[bytes]) -> bytes:
    """head, the chunk sizes, then the payloads (the inverse of split_chunks), in one copy."""
    return b"".join([head, *(write_varint(len(p)) for p in payloads), *payloads])


def decode_chunks(jobs: list[tuple[Header, memoryview]], h: Header, chunk: int, decode_into,
                  codec: str) -> np.ndarray:
    """All of a stream's values: decode_into(i, header, payload, out) of every chunk on the codec
    pool, each writing its values into its slice of the output (no serial concatenation)."""
    out = np.empty(h.n, h.dtype)
    parallel_map(lambda i: decode_into(i, *jobs[i], out[i * chunk:i * chunk + jobs[i][0].n]), list(range(len(jobs))))
    return out


def copy_into(out: np.ndarray, values: np.ndarray, codec: str) -> None:
    """A chunk's decoded values into their place in the output, checked against it."""
    if values.shape != out.shape or values.dtype != out.dtype:  # a codec bug, never the input's fault
        raise AssertionError(f"{codec} decoded {values.shape} {values.dtype}, expected {out.shape} {out.dtype}")
    out[:] = values


class ChunkedCodec(Codec):
    """A lossless codec whose stream is the header, then independently coded chunks of CHUNK
    values. Subclasses implement `_encode(a, bits) -> payload` and `_decode(header, payload) ->
    values` for one chunk (at most CHUNK values, never empty)."""

    # largest number of values one payload bit can stand for (bounds what a header may claim)
    values_per_bit: ClassVar[float] = 1.0

    def encode(self, a_in) -> bytes:
        a, bits = check_input(a_in, self.bits)
        shape = np.shape(a_in)
        pieces = [a[i:i + CHUNK] for i in range(0, a.size, CHUNK)]
        payloads = parallel_map(lambda i: self._encode_chunk(pieces[i], bits, shape, i * CHUNK),
                                list(range(len(pieces))))
        for piece, payload in zip(pieces, payloads):
            if piece.size > count_limit(8 * len(payload), self.values_per_bit):  # a codec bug if ever hit
                raise AssertionError(f"{self.codec_id}: a chunk compressed past what its decoder accepts")
        return join_chunks(pack_header(a, bits), payloads)

    def decode(self, buf) -> np.ndarray:
        buf = stream_bytes(buf)
        h = parse_header(buf)
        jobs = split_chunks(buf, h, h.size, CHUNK, self.values_per_bit, self.codec_id)
        return decode_chunks(jobs, h, CHUNK, lambda i, sub, payload, out: self._decode_into(sub, payload, out),
                             self.codec_id)

    def _encode_chunk(self, a: np.ndarray, bits: int, shape: tuple, start: int) -> bytes | np.ndarray:
        """Encode one chunk; `shape` is the whole array's and `start` the chunk's offset in it, for
        codecs whose model uses the layout (channels, rows)."""
        return self._encode(a, bits)

    @abstractmethod
    def _encode(self, a: np.ndarray, bits: int) -> bytes | np.ndarray:
        """One chunk's payload: bytes, or a uint8 array (joined into the stream without a copy
        of its own)."""

    @abstractmethod
    def _decode(self, h: Header, payload: memoryview) -> np.ndarray: ...

    def _decode_into(self, h: Header, payload: memoryview, out: np.ndarray) -> None:
        """Decode one chunk into `out` (h.n values of h.dtype); codecs whose kernels can write
        there directly override this and skip a copy."""
        copy_into(out, self._decode(h, payload), self.codec_id)


_REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    _REGISTRY[cls.codec_id] = cls
    return cls


def registry() -> dict[str, type[Codec]]:
    return dict(_REGISTRY)
