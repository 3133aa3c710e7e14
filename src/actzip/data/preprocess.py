"""Turning a PIL image into the tensor a model expects, with no torchvision needed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to `resize`, center-crop `crop` x `crop`, then (x - mean) / std with x in [0, 1]."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grayscale: bool = False

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("L" if self.grayscale else "RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((max(self.crop, round(w * scale)), max(self.crop, round(h * scale))),
                             Image.BILINEAR)
        w, h = image.size
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        x = x[None] if self.grayscale else x.permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (x - mean) / std

    def to_dict(self) -> dict:
        return asdict(self)


IMAGENET = Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# EfficientNet-Lite expects (x*255 - 127) / 128, i.e. mean 127/255 and std 128/255 on [0, 1] pixels.
EFFICIENTNET_LITE = Preprocess(256, 224, (127 / 255,) * 3, (128 / 255,) * 3)
FASHION_MNIST = Preprocess(28, 28, (0.2860,), (0.3530,), grayscale=True)
