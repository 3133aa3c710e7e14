import pytest
import torch
from torch import nn

from actzip import models
from actzip.data import bundled_photos, open_images
from actzip.errors import ActzipError, MissingDataError
from actzip.sites import find_sites


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mobilenet-v1"])
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_small_models_run_on_small_inputs(name, in_channels, size):
    m = models.load(name, in_channels=in_channels, num_classes=7)
    assert not m.training
    assert m(torch.randn(2, in_channels, size, size)).shape == (2, 7)


def test_width_multiplier_scales_the_model():
    narrow = sum(p.numel() for p in models.load("mobilenet-v1", width=0.25).parameters())
    wide = sum(p.numel() for p in models.load("mobilenet-v1", width=1.0).parameters())
    assert wide > 8 * narrow


def test_names_and_unknown_model():
    assert {"efficientnet-lite0", "resnet20", "resnet18", "mobilenet-v1"} <= set(models.names())
    with pytest.raises(ActzipError, match="did you mean resnet20"):
        models.load("resnet21")


def test_model_without_shipped_weights_refuses_pretrained():
    with pytest.raises(MissingDataError, match="actzip train"):
        models.load("resnet20", pretrained=True)


def test_efficientnet_lite0_classifies_the_labelled_photos():
    """The shipped weights and the canonical preprocessing together: foolbox's photos carry their labels."""
    model = models.load("efficientnet-lite0")
    photos = open_images("photos", models.preprocessing("efficientnet-lite0"))
    labelled = [i for i, item in enumerate(photos.items) if item.label is not None]
    assert len(labelled) == 20
    x = torch.stack([photos[i][0] for i in labelled])
    y = torch.tensor([photos[i][1] for i in labelled])
    with torch.no_grad():
        top1 = (model(x).argmax(1) == y).float().mean().item()
    assert top1 >= 0.8  # measured 0.85; random weights give ~0
    assert len(find_sites(model, x[:1])) == 49


def test_torchvision_models_build_with_the_import_shim():
    pytest.importorskip("torchvision.version")  # installed? (import of the package itself needs the shim)
    m = models.load("torchvision/resnet18")
    assert "torchvision/resnet18" in models.names()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(MissingDataError, match="offline"):
        models.load("torchvision/resnet18", pretrained=True)


def test_user_factory_and_weights(tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text("import torch\n"
                   "def make():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),"
                   " torch.nn.Conv2d(4, 2, 1))\n"
                   "def not_a_model():\n    return 42\n")
    m = models.load(f"{src}:make")
    assert isinstance(m, nn.Module)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    m2 = models.load(f"{src}:make", weights=tmp_path / "w.pt")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(ActzipError, match="not a torch.nn.Module"):
        models.load(f"{src}:not_a_model")
    with pytest.raises(ActzipError, match="names nothing callable"):
        models.load(f"{src}:missing")
    with pytest.raises(ActzipError, match="cannot import"):
        models.load("no_such_package_xyz.mod:make")


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(models.load("resnet20").state_dict(), tmp_path / "r20.pt")
    with pytest.raises(ActzipError, match="do not fit"):
        models.load("mobilenet-v1", weights=tmp_path / "r20.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ActzipError, match="cannot read weights"):
        models.load("resnet20", weights=tmp_path / "junk.pt")


def test_bundled_photos_are_found():
    items = bundled_photos()
    assert len(items) == 27 and sum(i.label is not None for i in items) == 20


def test_photo_views_start_with_the_plain_photos_then_reframe_and_mirror_them():
    pre = models.preprocessing("efficientnet-lite0")
    photos, views = open_images("photos", pre), open_images("photo-views", pre)
    n = len(photos)
    assert len(views) == 8 * n
    assert torch.equal(views[3][0], photos[3][0]) and views[3][1] == photos[3][1]
    tighter = views[n + 3][0]  # short side 224: the whole short side, no longer cropped
    assert tighter.shape == photos[3][0].shape and not torch.equal(tighter, photos[3][0])
    mirrored = views[4 * n + 3][0]
    assert views[4 * n + 3][1] == photos[3][1]
    # mirroring before a center crop mirrors the crop, up to the one-pixel offset of an odd margin
    assert any(torch.equal(mirrored[..., :, s:], photos[3][0].flip(-1)[..., :, :224 - s]) or
               torch.equal(mirrored[..., :, :224 - s], photos[3][0].flip(-1)[..., :, s:]) for s in (0, 1))
