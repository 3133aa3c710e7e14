"""actzip codecs as numcodecs codecs, so zarr (format 2) can store activation datasets with them.

Registered through the "numcodecs.codecs" entry point group under the ids "actzip.<name>" (the
namespace keeps them apart from numcodecs' own "zstd" and "lz4"). Needs numcodecs installed.

    import zarr, numcodecs
    z = zarr.create_array(store, shape=..., dtype="uint8", zarr_format=2,
                          compressors=numcodecs.get_codec({"id": "actzip.seg"}))

For zarr's format 3, see `actzip.codecs.zarr3`.

What a numcodecs codec is handed, and what comes back:
- any buffer: a typed array, bytes, bytearray, array.array. It is coded in memory order (a
  Fortran-ordered chunk as zarr lays it out), so decoding into the same layout is exact;
- 8- and 16-bit integers are coded as they are; wider integers (numpy's default int64, say) whose
  values fit 16 bits are coded as 16-bit values and come back in their own dtype, behind a one-byte
  marker (0xA0 + numpy's dtype character index, see WIDE); other dtypes, floats among them, are
  refused with a TypeError: quantize them first (`actzip.dumps`);
- `max_buffer_size` bounds what `encode` takes and what `decode` returns, checked before anything is
  allocated (ValueError), as numcodecs' own codecs do.
"""

from __future__ import annotations

import numpy as np
from numcodecs.abc import Codec as NumcodecsCodec
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy

from . import get, names
from .base import DTYPES, parse_header

WIDE = ("int32", "uint32", "int64", "uint64")  # marker 0xA0 + index: values coded in 16 bits
WIDE_MARK = 0xA0
NARROW = {"int": np.dtype(np.int16), "uint": np.dtype(np.uint16)}


def narrowed(a: np.ndarray) -> tuple[np.ndarray, bytes]:
    """(the array the actzip codec takes, the marker to put before its stream)."""
    if a.dtype in DTYPES.values():
        return a, b""
    if a.dtype.name not in WIDE:
        raise TypeError(f"actzip codecs code 8- and 16-bit integer activations (or wider integers whose values "
                        f"fit 16 bits), not {a.dtype}: quantize floats first (actzip.dumps)")
    narrow = NARROW["uint" if a.dtype.kind == "u" else "int"]
    info = np.iinfo(narrow)
    if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
        raise ValueError(f"{a.dtype} values span [{a.min()}, {a.max()}], outside the 16 bits actzip codes")
    return a.astype(narrow), bytes([WIDE_MARK + WIDE.index(a.dtype.name)])


def _adapter(name: str) -> type[NumcodecsCodec]:
    class Adapter(NumcodecsCodec):
        codec_id = f"actzip.{name}"
        max_buffer_size = 0x7FFFFFFF

        def __init__(self, **params):
            self.params = params
            self.codec = get(name, **params)

        def encode(self, buf):
            a = ensure_contiguous_ndarray(buf, self.max_buffer_size, flatten=False)
            a, marker = narrowed(a.reshape(-1, order="A"))
            return marker + self.codec.encode(a)

        def decode(self, buf, out=None):
            data = bytes(ensure_contiguous_ndarray(buf, self.max_buffer_size).view("u1"))
            wide = None
            if data and data[0] >= WIDE_MARK:
                if data[0] - WIDE_MARK >= len(WIDE):
                    raise ValueError(f"{self.codec_id}: unknown stream marker {data[0]}")
                wide, data = np.dtype(WIDE[data[0] - WIDE_MARK]), data[1:]
            header = parse_header(data)
            itemsize = wide.itemsize if wide is not None else header.dtype.itemsize
            if header.n * itemsize > self.max_buffer_size:
                raise ValueError(f"{self.codec_id}: the stream decodes to {header.n * itemsize} bytes, more than "
                                 f"max_buffer_size {self.max_buffer_size}")
            if out is not None:  # an object array would take pointers: refused (TypeError) as numcodecs does
                out = ensure_contiguous_ndarray(out, flatten=False)
            values = self.codec.decode(data)
            return ndarray_copy(values.astype(wide) if wide is not None else values, out)

        def get_config(self):
            return {"id": self.codec_id, **self.params}

        def __repr__(self):
            return f"{name}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    Adapter.__name__ = Adapter.__qualname__ = name
    Adapter.__doc__ = f"actzip's `{name}` codec for numcodecs and zarr format 2 (see the module doc)."
    return Adapter


globals().update({name: _adapter(name) for name in names()})
