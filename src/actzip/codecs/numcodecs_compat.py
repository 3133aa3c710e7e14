"""actzip codecs as numcodecs codecs, so zarr can store activation datasets with them.

Registered through the "numcodecs.codecs" entry point group under the ids "actzip.<name>" (the
namespace keeps them apart from numcodecs' own "zstd" and "lz4"). Needs numcodecs installed.

    import zarr, numcodecs
    z = zarr.create_array(store, shape=..., dtype="uint8", zarr_format=2,
                          compressors=numcodecs.get_codec({"id": "actzip.seg"}))
"""

from __future__ import annotations

from numcodecs.abc import Codec as NumcodecsCodec
from numcodecs.compat import ensure_ndarray, ndarray_copy

from . import get, names


def _adapter(name: str) -> type[NumcodecsCodec]:
    class Adapter(NumcodecsCodec):
        codec_id = f"actzip.{name}"

        def __init__(self, **params):
            self.params = params
            self.codec = get(name, **params)

        def encode(self, buf):
            return self.codec.encode(ensure_ndarray(buf))

        def decode(self, buf, out=None):
            return ndarray_copy(self.codec.decode(bytes(ensure_ndarray(buf).view("u1"))), out)

        def get_config(self):
            return {"id": self.codec_id, **self.params}

    Adapter.__name__ = Adapter.__qualname__ = f"Numcodecs_{name}"
    return Adapter


globals().update({name: _adapter(name) for name in names()})
