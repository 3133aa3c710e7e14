"""EfficientNet-Lite0's activation maps over the bundled photos, as the codec benchmarks take them.

A module of its own (not a function of codecs.py) so that every benchmark can import it by name:
`codecs.py` would shadow the standard library's `codecs` module.
"""

from __future__ import annotations

import numpy as np
import torch

from actzip import models
from actzip.data import open_images
from actzip.quant import code_dtype, params_for_range, quantize
from actzip.sites import capture


# Real photos that ship offline with scikit-image but not among actzip's bundled ones: held out
# from everything that was tuned on the bundled photos.
HELD_OUT = ["hubble_deep_field.jpg", "ihc.png", "retina.jpg", "motorcycle_right.png", "brick.png", "grass.png"]


def held_out_photos():
    """The HELD_OUT photos, preprocessed for Lite0 (grey ones as RGB), as a dataset."""
    import importlib.util
    from pathlib import Path

    from actzip.data.images import ImageItem, ImageSet

    root = Path(importlib.util.find_spec("skimage").origin).parent / "data"
    items = [ImageItem(root / name, None) for name in HELD_OUT]
    return ImageSet(items, models.preprocessing("efficientnet-lite0"), "held-out photos")


def lite0_streams(images: int, bits: int, group: int = 4, photos=None) -> list[np.ndarray]:
    """The b-bit codes of every site, one stream per site and group of photos (sites in call order
    within each group), each site quantized with its own max scale; of the bundled photos, or of
    `photos` (a dataset of (image, label))."""
    model = models.load("efficientnet-lite0")
    if photos is None:
        photos = open_images("photos", models.preprocessing("efficientnet-lite0"))
    streams = []
    for start in range(0, min(images, len(photos)), group):
        x = torch.stack([photos[i][0] for i in range(start, min(start + group, images, len(photos)))])
        acts = []
        with capture(model, lambda site, m, a: acts.append(a.clone())), torch.no_grad():
            model(x)
        for a in acts:
            p = params_for_range(bits, float(a.min()), float(a.max()))
            streams.append(quantize(a, p).numpy().astype(code_dtype(bits, p.signed)))
    return streams
