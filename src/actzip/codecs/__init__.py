"""Codecs for quantized activation maps, numcodecs-style: lossless ones, and the lossy `requant`,
`dctcm` and `klt`.

>>> import numpy as np
>>> from actzip import codecs
>>> c = codecs.get("seg", bits=8)
>>> a = np.array([0, 0, 3, 0, 200], dtype=np.uint8)
>>> codecs.from_config(c.get_config()).decode(c.encode(a)).tolist()
[0, 0, 3, 0, 200]
"""

from __future__ import annotations

import inspect

from ..errors import ActzipError
# Import order is the listing order: the baseline first, the byte compressors last.
from . import raw, zvc, rle, golomb, huffman, rans, context, ctxrans, generic, requant, dctcm, klt  # noqa: F401,I001  (each registers its codec)
from .base import Codec, LossyCodec, registry, set_threads, threads


def names(lossy: bool = False) -> list[str]:
    """The registered codecs; the lossy ones only when asked for."""
    return [name for name, cls in registry().items() if lossy or cls.lossless]


def get(name: str, **params) -> Codec:
    try:
        cls = registry()[name]
    except KeyError:
        raise ActzipError(f"unknown codec {name!r}; known: {', '.join(names(lossy=True))}") from None
    try:
        return cls(**params)
    except TypeError as e:  # an unknown keyword, or a value of the wrong type reaching a comparison
        accepted = [p for p in inspect.signature(cls).parameters if p != "bits"]
        raise ValueError(f"codec {name!r}: bad parameters {params} ({e}); it takes "
                         f"{', '.join(accepted) or 'no parameters'} (and bits)") from None


def summary(name: str) -> str:
    """One line on what the codec does."""
    return (registry()[name].__doc__ or "").strip().splitlines()[0]


def from_config(config: dict) -> Codec:
    if not isinstance(config, dict) or "id" not in config:
        raise ActzipError("a codec config is a dict with an 'id'")
    return get(config["id"], **{k: v for k, v in config.items() if k != "id"})


__all__ = ["Codec", "LossyCodec", "from_config", "get", "names", "set_threads", "summary", "threads"]
