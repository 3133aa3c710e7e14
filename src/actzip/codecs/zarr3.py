"""actzip codecs for zarr's format 3, as the array-to-bytes codec (zarr's "serializer").

zarr 3 keeps numcodecs codecs for format 2 only; in format 3 a codec that needs the chunk's dtype and
layout, as actzip's do, takes the place of the default `bytes` serializer:

    import zarr
    from actzip.codecs.zarr3 import ActzipCodec
    z = zarr.create_array(store, shape=(64, 32, 56, 56), chunks=(8, 32, 56, 56), dtype="uint8",
                          serializer=ActzipCodec("seg"), compressors=None)

Registered under the name "actzip" (entry point group "zarr.codecs"), so stores written with it open
without importing actzip first. A chunk is coded in logical C order whatever its memory order, so an
array with `order="F"` round-trips exactly; the bytes are those of `numcodecs_compat` (dtypes, the
marker for wider integers, `max_buffer_size`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

from . import names, numcodecs_compat

NAME = "actzip"


@dataclass(frozen=True)
class ActzipCodec(ArrayBytesCodec):
    """An actzip codec as zarr 3's serializer.

    Parameters
    ----------
    codec : str
        actzip codec name, one of `actzip.codecs.names()` (lossless: a store must read back what it wrote).
    params : dict
        the codec's settings, as `actzip.codecs.get(codec, **params)` takes them.
    """

    is_fixed_size = False
    codec: str = "seg"
    params: dict = field(default_factory=dict)

    def __init__(self, codec: str = "seg", **params):
        if codec not in names():
            raise ValueError(f"zarr stores need a lossless actzip codec, one of {', '.join(names())}; "
                             f"got {codec!r}")
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "params", dict(params))
        self._adapter  # builds the codec now, so that bad settings fail here

    @cached_property
    def _adapter(self):
        return getattr(numcodecs_compat, self.codec)(**self.params)

    @classmethod
    def from_dict(cls, data: dict) -> "ActzipCodec":
        _, configuration = parse_named_configuration(data, NAME)
        return cls(**configuration)

    def to_dict(self) -> dict:
        return {"name": NAME, "configuration": {"codec": self.codec, **self.params}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        native = dtype.to_native_dtype()
        if native.kind not in "iu" or native.itemsize > 8:
            raise ValueError(f"actzip codecs store integer activations, not {native}: quantize them first")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError  # variable size, as any compressor's

    def _encode_sync(self, chunk_array, chunk_spec):
        data = np.ascontiguousarray(chunk_array.as_numpy_array())  # logical C order, whatever the layout
        return chunk_spec.prototype.buffer.from_bytes(self._adapter.encode(data))

    def _decode_sync(self, chunk_bytes, chunk_spec):
        dtype = chunk_spec.dtype.to_native_dtype()
        values = self._adapter.decode(chunk_bytes.to_bytes())
        if values.dtype != dtype or values.size != int(np.prod(chunk_spec.shape)):
            raise ValueError(f"actzip.{self.codec}: a chunk decoded to {values.size} {values.dtype} values, the "
                             f"array holds {chunk_spec.shape} {dtype}")
        return chunk_spec.prototype.nd_buffer.from_numpy_array(values.reshape(chunk_spec.shape))

    async def _encode_single(self, chunk_array, chunk_spec):
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)
