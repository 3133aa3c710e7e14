"""Fashion-MNIST from the IDX files Debian's `dataset-fashion-mnist` installs (or the same files anywhere)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ActzipError, MissingDataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_HOW_TO_GET = ("install it with `apt-get install dataset-fashion-mnist` (Debian) or point "
               "ACTZIP_FASHION_MNIST / --root at a folder with the four IDX files")


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise MissingDataError(f"Fashion-MNIST file {stem}[.gz] not found in {root}: {_HOW_TO_GET}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes as a numpy array, its header checked."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ActzipError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ActzipError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise ActzipError(f"{path}: header says {shape}, file holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_arrays(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of one split."""
    if split not in _FILES:
        raise ActzipError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = Path(root or os.environ.get("ACTZIP_FASHION_MNIST") or DEFAULT_ROOT)
    images_file, labels_file = _FILES[split]
    images = read_idx(_find(root, images_file))
    labels = read_idx(_find(root, labels_file)).astype(np.int64)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ActzipError(f"Fashion-MNIST files in {root} do not match: images {images.shape}, labels {labels.shape}")
    return images, labels


class FashionMNIST(torch.utils.data.Dataset):
    """Items are (tensor, label). Without a transform the tensor is normalised (1, 28, 28) float32;
    with one, the transform gets a PIL image (so any model's preprocessing applies)."""

    def __init__(self, split: str = "train", root: str | Path | None = None, transform=None):
        self.images, self.labels = load_arrays(split, root)
        self.transform = transform
        self.name = f"fashion-mnist-{split}"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.transform is not None:
            return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)[None]
        return (x - 0.2860) / 0.3530, int(self.labels[i])
