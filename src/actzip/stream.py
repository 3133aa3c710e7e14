"""The self-describing container: a float tensor, quantized and encoded, in one byte string.

    magic "AZIP" | version (1 byte) | header length (varint) | header (UTF-8 JSON)
    | payload length (varint) | payload (one codec stream) | CRC32 of header and payload (4 bytes, LE)

The header records the shape, the original float dtype, the codec config and the quantizer
(bits, signedness, scales, axis). `loads` returns the dequantized float array of the original shape.

>>> import numpy as np, actzip
>>> x = np.maximum(np.random.default_rng(0).normal(size=(2, 3, 4, 4)), 0).astype(np.float32)
>>> y = actzip.loads(actzip.dumps(x, codec="seg", bits=8))
>>> y.shape, bool(np.abs(y - x).max() <= x.max() / 255 / 2 + 1e-7)
((2, 3, 4, 4), True)
"""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import torch

from . import codecs
from .codecs.base import read_varint, write_varint
from .errors import ActzipError, CorruptStreamError
from .quant import QuantParams, code_dtype, dequantize, params_for_range, quantize

MAGIC = b"AZIP"
VERSION = 1
MAX_HEADER = 1 << 20
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _as_tensor(x) -> torch.Tensor:
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
    """Quantize x to `bits` (scale from its own range; per channel along `axis` if asked) and encode it."""
    t = _as_tensor(x)
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


def read_header(buf: bytes) -> tuple[dict, memoryview]:
    """(header dict, payload) of a container, its checksum and framing verified."""
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise TypeError(f"loads takes bytes, got {type(buf).__name__}")
    buf = memoryview(bytes(buf))
    if len(buf) < len(MAGIC) + 1 or bytes(buf[:4]) != MAGIC:
        raise CorruptStreamError("not an actzip stream (bad magic)")
    if buf[4] != VERSION:
        raise CorruptStreamError(f"stream format version {buf[4]}, this actzip reads version {VERSION}")
    size, pos = read_varint(buf, 5, "header length")
    if size > MAX_HEADER or pos + size > len(buf):
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
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptStreamError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CorruptStreamError("header is not a JSON object")
    shape = _field(header, "shape", list)
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape) or len(shape) > 32:
        raise CorruptStreamError(f"bad shape {shape!r}")
    if _field(header, "dtype", str) not in FLOAT_DTYPES:
        raise CorruptStreamError(f"bad dtype {header['dtype']!r}")
    _field(header, "codec", dict)
    _field(header, "quant", dict)
    return header, payload


def _quantizer(header: dict) -> QuantParams:
    try:
        return QuantParams.from_dict(header["quant"])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptStreamError(f"bad quantizer in header: {e}") from None


def _codec(header: dict):
    try:
        return codecs.from_config(header["codec"])
    except (ActzipError, TypeError, ValueError) as e:
        raise CorruptStreamError(f"bad codec in header: {e}") from None


def loads(buf: bytes) -> np.ndarray:
    """The dequantized float array (original shape and float dtype) of a `dumps` stream."""
    header, payload = read_header(buf)
    params, coder = _quantizer(header), _codec(header)
    shape = header["shape"]
    q = coder.decode(payload)
    if q.size != math.prod(shape):
        raise CorruptStreamError(f"payload holds {q.size} values, shape {shape} needs {math.prod(shape)}")
    if q.dtype != code_dtype(params.bits, params.signed):
        raise CorruptStreamError(f"payload dtype {q.dtype} does not match a {params.bits}-bit quantizer")
    codes = torch.from_numpy(q.astype(np.int32)).reshape(shape)
    if params.axis is not None and (params.axis >= len(shape) or shape[params.axis] != len(params.scale)):
        raise CorruptStreamError("per-channel scales do not match the shape")
    x = dequantize(codes, params)
    dtype = "float32" if header["dtype"] == "bfloat16" else header["dtype"]  # numpy has no bfloat16
    return x.to(getattr(torch, dtype)).numpy()


def info(buf: bytes) -> dict:
    """What a stream holds, without decoding its payload."""
    header, payload = read_header(buf)
    n = math.prod(header["shape"])
    bits = _quantizer(header).bits
    return {**header, "bytes": len(buf), "payload_bytes": len(payload),
            "bits_per_value": 8 * len(buf) / n if n else 0.0,
            "compression": n * bits / (8 * len(buf)) if len(buf) else 0.0}
