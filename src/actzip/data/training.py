"""Labelled train/test sets for training: Fashion-MNIST (offline), CIFAR-10 through torchvision,
or an ImageFolder tree with train/ and val/ (or test/) subfolders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ActzipError, MissingDataError
from .fashion_mnist import FashionMNIST
from .images import ImageSet, folder_images
from .preprocess import Preprocess

NAMES = ("fashion-mnist", "cifar10", "<folder with train/ and val/>")


@dataclass
class TrainingSets:
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    in_channels: int
    num_classes: int
    preprocess: Preprocess | None  # how test images were prepared (None: the set's own tensors)


def training_sets(name: str, root: str | Path | None = None, download: bool = False,
                  image_size: int = 32) -> TrainingSets:
    if name == "fashion-mnist":
        return TrainingSets(FashionMNIST("train", root), FashionMNIST("test", root), 1, 10, None)
    if name == "cifar10":
        return _cifar10(root, download)
    path = Path(name)
    if path.is_dir():
        return _folder(path, image_size)
    raise ActzipError(f"unknown dataset {name!r}: use one of {', '.join(NAMES)}")


def _cifar10(root, download: bool) -> TrainingSets:
    from ..models.tv import import_torchvision

    tv = import_torchvision()
    t = tv.transforms
    norm = t.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    root = Path(root or "data/cifar10")
    try:
        train = tv.datasets.CIFAR10(root, train=True, download=download,
                                    transform=t.Compose([t.RandomCrop(32, 4), t.RandomHorizontalFlip(),
                                                         t.ToTensor(), norm]))
        test = tv.datasets.CIFAR10(root, train=False, download=download, transform=t.Compose([t.ToTensor(), norm]))
    except RuntimeError as e:
        raise MissingDataError(f"CIFAR-10 not found in {root} ({e}); pass --download to fetch it") from None
    return TrainingSets(train, test, 3, 10, None)


def _folder(path: Path, size: int) -> TrainingSets:
    val = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if not (path / "train").is_dir() or val is None:
        raise MissingDataError(f"{path} needs train/ and val/ (or test/) subfolders of class folders")
    prep = Preprocess(round(size * 8 / 7), size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_items, test_items = folder_images(path / "train"), folder_images(val)
    classes = len({i.path.parent.name for i in train_items})
    if any(i.label is None for i in train_items):
        raise ActzipError(f"{path / 'train'} must hold one subfolder per class")
    return TrainingSets(ImageSet(train_items, prep, str(path / "train")), ImageSet(test_items, prep, str(val)),
                        3, classes, prep)
