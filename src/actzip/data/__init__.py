"""Image sets that work offline: bundled photos, any image folder, Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ActzipError
from .fashion_mnist import FashionMNIST
from .images import ImageItem, ImageSet, bundled_photos, folder_images, image_views
from .preprocess import EFFICIENTNET_LITE, FASHION_MNIST, IMAGENET, Preprocess

NAMED_SETS = ("photos", "photo-views", "fashion-mnist", "fashion-mnist-train")


def open_images(spec: str | Path | None, preprocess: Preprocess) -> torch.utils.data.Dataset:
    """The image set `spec` names, each image preprocessed for the model.

    spec: None or "photos" (the bundled photos), "photo-views" (each of them in 8 framings, the
    plain ones first: `image_views`), "fashion-mnist" (its 10k test split),
    "fashion-mnist-train", or a folder of images.
    """
    if spec is None or str(spec) == "photos":
        return ImageSet(bundled_photos(), preprocess, "photos")
    if str(spec) == "photo-views":
        return image_views(bundled_photos(), preprocess, "photo-views")
    if str(spec) in ("fashion-mnist", "fashion-mnist-test"):
        return FashionMNIST("test", transform=preprocess)
    if str(spec) == "fashion-mnist-train":
        return FashionMNIST("train", transform=preprocess)
    path = Path(spec)
    if not path.exists():
        raise ActzipError(f"--images {spec!r} is neither a folder nor one of {', '.join(NAMED_SETS)}")
    return ImageSet(folder_images(path), preprocess, str(path))


class TensorImages(torch.utils.data.Dataset):
    """A batch of preprocessed images (N, C, H, W) as a dataset of (image, -1): no labels."""

    def __init__(self, batch: torch.Tensor, name: str = "tensor"):
        if batch.dim() < 2:
            raise ActzipError(f"a tensor of images is (N, C, H, W), got shape {tuple(batch.shape)}")
        self.batch, self.name = batch, name

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, i: int):
        return self.batch[i], -1


def as_images(images) -> torch.utils.data.Dataset:
    """A dataset of (image, label) pairs as it is; a tensor batch as unlabelled images."""
    return TensorImages(images) if isinstance(images, torch.Tensor) else images


__all__ = ["TensorImages", "as_images", "FashionMNIST", "ImageItem", "ImageSet", "Preprocess", "IMAGENET", "EFFICIENTNET_LITE",
           "FASHION_MNIST", "bundled_photos", "folder_images", "image_views", "open_images"]
