"""Image sets as torch Datasets: the photos shipped inside installed packages, and any folder of images."""

from __future__ import annotations

import importlib.util
import re
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ActzipError, ActzipWarning, MissingDataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# Natural photos, by package: (package, file inside its data folder, ImageNet label or None).
_PACKAGE_PHOTOS = [
    ("skimage", "data/astronaut.png", None),
    ("skimage", "data/chelsea.png", None),
    ("skimage", "data/coffee.png", None),
    ("skimage", "data/rocket.jpg", None),
    ("skimage", "data/motorcycle_left.png", None),
    ("sklearn", "datasets/images/china.jpg", None),
    ("sklearn", "datasets/images/flower.jpg", None),
]
_FOOLBOX_IMAGENET = re.compile(r"imagenet_\d+_(\d+)\.jpg$")


@dataclass(frozen=True)
class ImageItem:
    path: Path
    label: int | None  # class index, or None when unknown


class ImageSet(torch.utils.data.Dataset):
    """Images from files, each turned into a tensor by `transform`; items are (tensor, label or -1)."""

    def __init__(self, items: list[ImageItem], transform: Callable[[Image.Image], torch.Tensor], name: str):
        if not items:
            raise ActzipError(f"image set {name!r} is empty")
        self.items = items
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        with Image.open(item.path) as im:
            x = self.transform(im)
        return x, -1 if item.label is None else item.label


VIEW_SCALES = (1.0, 0.875, 1.125, 1.25)


def _mirrored(transform: Callable[[Image.Image], torch.Tensor], image: Image.Image) -> torch.Tensor:
    return transform(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def image_views(items: list[ImageItem], preprocess, name: str) -> torch.utils.data.ConcatDataset:
    """Every image of `items` seen several ways: the short side resized to each of VIEW_SCALES
    times the preprocessing's size before the center crop (a tighter or looser framing), mirrored
    or not. The first len(items) are the plain images, so a run calibrated on those
    (calibration_images = len(items)) has never seen the other views."""
    sizes = [replace(preprocess, resize=max(preprocess.crop, round(preprocess.resize * s))) for s in VIEW_SCALES]
    transforms = sizes + [partial(_mirrored, t) for t in sizes]
    return torch.utils.data.ConcatDataset([ImageSet(items, t, name) for t in transforms])


def _package_dir(package: str) -> Path | None:
    # Found without importing: foolbox, scikit-image and scikit-learn are slow to import, and
    # only their data files are wanted.
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec and spec.origin else None


def bundled_photos() -> list[ImageItem]:
    """foolbox's 20 labelled ImageNet photos, then scikit-image's and scikit-learn's photos."""
    items = []
    foolbox = _package_dir("foolbox")
    if foolbox is not None:
        for p in sorted((foolbox / "data").glob("imagenet_*.jpg")):
            items.append(ImageItem(p, int(_FOOLBOX_IMAGENET.search(p.name).group(1))))
    for package, rel, label in _PACKAGE_PHOTOS:
        root = _package_dir(package)
        if root is not None and (root / rel).is_file():
            items.append(ImageItem(root / rel, label))
    if not items:
        raise MissingDataError("no bundled photos found: install them with `pip install 'actzip[images]'` "
                               "(foolbox, scikit-image, scikit-learn), or pass --images DIR")
    return items


def folder_images(root: str | Path) -> list[ImageItem]:
    """Every readable image under `root`. Files in class subfolders get the subfolder's sorted index
    as their label (the ImageFolder convention); files that are not images are skipped with a warning."""
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError(f"image folder {str(root)!r} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    classes = sorted({p.parent for p in files if p.parent != root})
    class_index = {d: i for i, d in enumerate(classes)}
    items, skipped = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            skipped.append(p.name)
            continue
        items.append(ImageItem(p, class_index.get(p.parent)))
    if skipped:
        shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        warnings.warn(f"skipped {len(skipped)} file(s) that are not images in {root}: {shown}", ActzipWarning,
                      stacklevel=2)
    if not items:
        raise ActzipError(f"no images in {root}")
    return items
