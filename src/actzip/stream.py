"""The self-describing container: a float tensor, quantized and encoded, in one byte string.

    magic "AZIP" | version (1 byte) | header length (varint) | header (UTF-8 JSON)
    | payload length (varint) | payload (one codec stream) | CRC32 of header and payload (4 bytes, LE)

The header records the shape, the original float dtype, the codec config and the quantizer
(bits, signedness, scales, axis). `loads` returns the dequantized float array of the original shape.

A stream is hostile until checked: the header is at most 1 MB of JSON without NaN or infinities,
every field is checked for type and range (rank <= 8, at most 2^32 values, scales finite and
positive, one per channel of the axis), and the output must fit `max_size` bytes before anything
is decoded. Whatever the bytes, `loads` and `info` raise CorruptStreamError and nothing else.

>>> import numpy as np, actzip
>>> x = np.maximum(np.random.default_rng(0).normal(size=(2, 3, 4, 4)), 0).astype(np.float32)
>>> y = actzip.loads(actzip.dumps(x, codec="seg", bits=8))
>>> y.shape, bool(np.abs(y - x).max() <= x.max() / 255 / 2 + 1e-7)
((2, 3, 4, 4), True)
"""

from __future__ import annotations

import json
import math
import os
import zlib

import numpy as np

from . import codecs
from .codecs.base import read_varint, write_varint
from .errors import ActzipError, CorruptStreamError

# torch (through .quant) is imported where a tensor is made or quantized, not here: reading a
# header (`actzip info`) starts in well under a second without it.
MIN_BITS, MAX_BITS = 2, 16  # as .quant, which tests/test_stream.py checks

MAGIC = b"AZIP"
VERSION = 1
MAX_HEADER = 1 << 20
MAX_RANK = 8
MAX_VALUES = 1 << 32
DEFAULT_MAX_SIZE = (1 << 31) - 1  # bytes a decoded tensor may take, as numcodecs' max_buffer_size
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
OUTPUT_ITEMSIZE = {"float16": 2, "bfloat16": 4, "float32": 4, "float64": 8}  # numpy has no bfloat16


class StreamTooLargeError(CorruptStreamError):
    """A well-formed stream whose decoded tensor would exceed the caller's `max_size`."""


def _as_tensor(x):
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise ValueError(f"dumps takes a float array, got {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise ValueError(f"dumps takes a float tensor, got {x.dtype}")
        return x.detach().cpu()
    raise TypeError(f"dumps takes a numpy array or torch tensor, got {type(x).__name__}")


def dumps(x, codec: str = "seg", bits: int = 8, per_channel: bool = False, axis: int = 1, **codec_params) -> bytes:
    """Quantize x to `bits` (scale from its own range; per channel along `axis` if asked) and encode it.
    Refuses, before any work, what `loads` would refuse: more than 8 dimensions or 2^32 values."""
    import torch

    from .quant import code_dtype, params_for_range, quantize

    clash = sorted(set(codec_params) & {"bits", "x", "codec", "per_channel", "axis"})
    if clash:
        raise ValueError(f"{', '.join(clash)} is dumps' own setting, not a codec parameter")
    t = _as_tensor(x)
    if t.ndim > MAX_RANK or t.numel() > MAX_VALUES:
        raise ValueError(f"streams hold at most {MAX_RANK} dimensions and {MAX_VALUES} values, got shape "
                         f"{tuple(t.shape)}")
    if per_channel and not -t.ndim <= axis < t.ndim:
        raise ValueError(f"axis {axis} is out of range for {t.ndim} dimensions")
    if not torch.isfinite(t).all():
        raise ValueError("cannot encode NaN or infinity")
    flat = t.float()
    if per_channel:
        if t.ndim < 2:
            raise ValueError("per-channel quantization needs at least 2 dimensions")
        dims = [d for d in range(t.ndim) if d != axis % t.ndim]
        lo, hi = flat.amin(dims).numpy(), flat.amax(dims).numpy()
        params = params_for_range(bits, lo, hi, axis % t.ndim)
    else:
        lo, hi = (float(flat.min()), float(flat.max())) if t.numel() else (0.0, 0.0)
        params = params_for_range(bits, lo, hi)
    q = quantize(flat, params).numpy().astype(code_dtype(bits, params.signed))
    coder = codecs.get(codec, bits=bits, **codec_params)
    payload = coder.encode(q)
    header = json.dumps({"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                         "codec": coder.get_config(), "quant": params.to_dict()},
                        separators=(",", ":")).encode()
    crc = zlib.crc32(payload, zlib.crc32(header))
    return (MAGIC + bytes([VERSION]) + write_varint(len(header)) + header + write_varint(len(payload)) + payload
            + crc.to_bytes(4, "little"))


def _field(header: dict, key: str, kind):
    if key not in header or not isinstance(header[key], kind) or isinstance(header[key], bool) and kind is not bool:
        raise CorruptStreamError(f"header field {key!r} is missing or of the wrong type")
    return header[key]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_finite(v) -> bool:
    if not (_is_int(v) or isinstance(v, float)):
        return False
    try:
        return 0 < float(v) < math.inf  # a float, as the quantizer will hold it: 1e-400 is 0
    except OverflowError:  # an int past the float range
        return False


def _refuse_constant(name: str):
    raise CorruptStreamError(f"header holds {name}, which JSON does not allow")


def _parse_json(raw: bytes) -> dict:
    try:
        header = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptStreamError("header is not valid JSON") from None
    except RecursionError:
        raise CorruptStreamError("header nests too deep") from None
    if not isinstance(header, dict):
        raise CorruptStreamError("header is not a JSON object")
    return header


def read_header(buf: bytes) -> tuple[dict, memoryview]:
    """(header dict, payload) of a container: framing, checksum and every header field verified."""
    header, payload, _, _ = _checked(buf)
    return header, payload


def _checked(buf: bytes):
    """(header, payload, quantizer fields, codec) of a container, everything verified."""
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise TypeError(f"loads takes bytes, got {type(buf).__name__}")
    buf = memoryview(bytes(buf))
    size, pos = header_span(buf)
    if pos + size > len(buf):
        raise CorruptStreamError("header length runs past the end of the stream")
    raw_header = bytes(buf[pos:pos + size])
    pos += size
    n_payload, pos = read_varint(buf, pos, "payload length")
    if pos + n_payload + 4 != len(buf):
        raise CorruptStreamError(f"stream is {len(buf)} bytes, its framing says {pos + n_payload + 4}")
    payload = buf[pos:pos + n_payload]
    crc = int.from_bytes(buf[pos + n_payload:], "little")
    if zlib.crc32(payload, zlib.crc32(raw_header)) != crc:
        raise CorruptStreamError("checksum mismatch: the stream was damaged")
    header = _parse_json(raw_header)
    return (header, payload, *_validated(header))


def _validated(header: dict) -> tuple[dict, "codecs.Codec"]:
    """(quantizer fields, codec) of a parsed header, after checking every field's type and range."""
    shape = _field(header, "shape", list)
    if len(shape) > MAX_RANK or not all(_is_int(d) and 0 <= d <= MAX_VALUES for d in shape) \
            or math.prod(shape) > MAX_VALUES:
        raise CorruptStreamError(f"bad shape {shape[:MAX_RANK + 1]!r}: at most {MAX_RANK} dimensions and "
                                 f"{MAX_VALUES} values")
    if _field(header, "dtype", str) not in FLOAT_DTYPES:
        raise CorruptStreamError(f"bad dtype {header['dtype'][:20]!r}")
    _field(header, "codec", dict)
    return _check_quantizer(header), _codec(header)


def read_file_header(path) -> tuple[dict, int]:
    """(checked header, file size) of a stream file, reading only its head: the magic, the header
    and the payload length, whose framing must add up to the file's size. The checksum, which
    covers the payload, is not read: `loads` verifies it."""
    with open(path, "rb") as f:
        head = f.read(16)
        size, pos = header_span(head)
        f.seek(pos)
        raw_header = f.read(size)
        if len(raw_header) < size:
            raise CorruptStreamError("header length runs past the end of the stream")
        n_payload, used = read_varint(f.read(10), 0, "payload length")
        total = os.fstat(f.fileno()).st_size
    if pos + size + used + n_payload + 4 != total:
        raise CorruptStreamError(f"the file is {total} bytes, its framing says {pos + size + used + n_payload + 4}")
    header = _parse_json(raw_header)
    _validated(header)
    return header, total


def header_span(buf: bytes | memoryview) -> tuple[int, int]:
    """(header length, where the header starts) from a stream's first bytes: magic, version and the
    length field; `buf` may stop there (a file's first 16 bytes are enough)."""
    if len(buf) < len(MAGIC) + 1 or bytes(buf[:4]) != MAGIC:
        raise CorruptStreamError("not an actzip stream (bad magic)")
    if buf[4] != VERSION:
        raise CorruptStreamError(f"stream format version {buf[4]}, this actzip reads version {VERSION}")
    size, pos = read_varint(buf, 5, "header length")
    if size > MAX_HEADER:
        raise CorruptStreamError(f"header of {size} bytes, more than the {MAX_HEADER} a stream may have")
    return size, pos


def _check_quantizer(header: dict) -> dict:
    """The quantizer fields of a header whose shape is already checked, each checked by type and range."""
    quant, shape = _field(header, "quant", dict), header["shape"]
    bits, signed, scale, axis = (quant.get(k) for k in ("bits", "signed", "scale", "axis"))
    if not _is_int(bits) or not MIN_BITS <= bits <= MAX_BITS or not isinstance(signed, bool):
        raise CorruptStreamError(f"bad quantizer: bits {str(bits)[:20]}, signed {str(signed)[:20]}")
    if axis is not None and (not _is_int(axis) or not 0 <= axis < len(shape)):
        raise CorruptStreamError(f"bad quantizer axis {str(axis)[:20]} for {len(shape)} dimensions")
    channels = 1 if axis is None else shape[axis]
    if not isinstance(scale, list) or len(scale) != channels:
        raise CorruptStreamError(f"bad quantizer: {channels} scale(s) expected")
    if not all(_positive_finite(v) for v in scale):
        raise CorruptStreamError("bad quantizer: scales must be finite positive numbers")
    return {"bits": bits, "signed": signed, "scale": [float(v) for v in scale], "axis": axis}


def _codec(header: dict):
    try:
        return codecs.from_config(header["codec"])
    except (ActzipError, TypeError, ValueError, OverflowError, RecursionError) as e:
        raise CorruptStreamError(f"bad codec in header: {str(e)[:200]}") from None


def output_bytes(header: dict) -> int:
    """Bytes of the tensor `loads` would return for this header."""
    return math.prod(header["shape"]) * OUTPUT_ITEMSIZE[header["dtype"]]


def loads(buf: bytes, max_size: int = DEFAULT_MAX_SIZE) -> np.ndarray:
    """The dequantized float array (original shape and float dtype) of a `dumps` stream. A stream
    whose tensor would take more than `max_size` bytes is refused before anything is decoded
    (StreamTooLargeError): compression can be strong enough that a few KB stand for GBs."""
    import torch

    from .quant import QuantParams, code_dtype, dequantize

    header, payload, quant, coder = _checked(buf)
    if output_bytes(header) > max_size:
        raise StreamTooLargeError(f"the stream decodes to {output_bytes(header)} bytes, more than max_size "
                                  f"{max_size}")
    params = QuantParams(quant["bits"], quant["signed"], tuple(quant["scale"]), quant["axis"])
    shape = header["shape"]
    q = coder.decode(payload)
    if q.size != math.prod(shape):
        raise CorruptStreamError(f"payload holds {q.size} values, shape {shape} needs {math.prod(shape)}")
    if q.dtype != code_dtype(params.bits, params.signed):
        raise CorruptStreamError(f"payload dtype {q.dtype} does not match a {params.bits}-bit quantizer")
    codes = torch.from_numpy(q.astype(np.int32)).reshape(shape)
    x = dequantize(codes, params)
    dtype = "float32" if header["dtype"] == "bfloat16" else header["dtype"]  # numpy has no bfloat16
    return x.to(getattr(torch, dtype)).numpy()


def info(buf: bytes) -> dict:
    """What a stream holds, without decoding its payload."""
    header, payload, _, _ = _checked(buf)
    return summarize(header, len(buf), len(payload))


def summarize(header: dict, total_bytes: int, payload_bytes: int | None = None) -> dict:
    """The header with the stream's size, bits per value and compression ratio over raw codes."""
    n = math.prod(header["shape"])
    bits = header["quant"]["bits"]
    return {**header, "bytes": total_bytes, "payload_bytes": payload_bytes,
            "bits_per_value": 8 * total_bytes / n if n else 0.0,
            "compression": n * bits / (8 * total_bytes) if total_bytes else 0.0}
