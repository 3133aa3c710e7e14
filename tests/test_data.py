import gzip
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from actzip.data import FASHION_MNIST, IMAGENET, FashionMNIST, folder_images, open_images
from actzip.data.fashion_mnist import DEFAULT_ROOT, read_idx
from actzip.errors import ActzipError, ActzipWarning, MissingDataError


def _write_png(path, size=(40, 30), color=(200, 10, 10)):
    Image.new("RGB", size, color).save(path)


def test_preprocess_resizes_crops_and_normalises():
    img = Image.new("RGB", (400, 300), (255, 0, 127))
    x = IMAGENET(img)
    assert x.shape == (3, 224, 224)
    assert x[0].mean().item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)
    g = FASHION_MNIST(img)
    assert g.shape == (1, 28, 28)


def test_folder_with_class_subfolders_and_a_non_image(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        _write_png(tmp_path / cls / "a.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(ActzipWarning, match="skipped 1 file"):
        items = folder_images(tmp_path)
    assert [(i.path.parent.name, i.label) for i in items] == [("cat", 0), ("dog", 1)]


def test_folder_with_nothing_usable(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ActzipError, match="no images"):
            folder_images(tmp_path)
    with pytest.raises(MissingDataError):
        folder_images(tmp_path / "missing")
    with pytest.raises(ActzipError, match="neither a folder"):
        open_images(str(tmp_path / "missing"), IMAGENET)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_on_small_idx_files(tmp_path):
    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([4, 0, 9]))
    ds = FashionMNIST("test", root=tmp_path)
    assert len(ds) == 3 and ds[2][1] == 9 and ds[0][0].shape == (1, 28, 28)
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), imgs)
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST("train", root=tmp_path)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(bytes([0, 0, 8, 1]) + (1000).to_bytes(4, "big") + b"\x00" * 10)
    with pytest.raises(ActzipError, match="header says"):
        read_idx(path)


@pytest.mark.skipif(not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist():
    train, test = FashionMNIST("train"), FashionMNIST("test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    x, _ = test[0]
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 1.5
