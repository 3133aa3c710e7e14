import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from actzip import models
from actzip.models.small import resnet20
from actzip.sparsify import PixelMask, attach_pixel_masks
from actzip.sparsify.pixelmask import mask_sparsity, selected_convs
from actzip.train import TrainConfig, train
from conftest import write_two_class_folder


def _model():
    torch.manual_seed(0)
    return resnet20(width=0.25).eval()


def _images(n=32):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=g), torch.zeros(n, dtype=torch.long))


def test_schedule_is_dense_then_quadratic_then_frozen():
    c = PixelMask(0.4, warmup=0.1, ramp_end=0.5)
    assert c.sparsity_at(0.0) == c.sparsity_at(0.09) == 0.0
    assert c.sparsity_at(0.3) == pytest.approx(0.4 * (1 - 0.5**2))
    assert c.sparsity_at(0.5) == c.sparsity_at(0.9) == pytest.approx(0.4)
    values = [c.sparsity_at(p / 100) for p in range(101)]
    assert values == sorted(values)


def test_masks_zero_whole_output_pixels_before_batchnorm():
    model = _model()
    x = _images()[0][0][None]
    handle = attach_pixel_masks(model, PixelMask(0.3), x)
    assert handle.update(1.0) == pytest.approx(0.3)
    outputs = {}
    for name, conv in selected_convs(model, PixelMask()).items():
        conv.register_forward_hook(lambda m, a, o, n=name: outputs.__setitem__(n, o))
    model(torch.rand(2, 1, 28, 28))
    for name, conv in selected_convs(model, PixelMask()).items():
        masked = conv.pixel_mask[0, 0] == 0
        h, w = masked.shape
        assert int(masked.sum()) == round(0.3 * h * w)
        assert torch.all(outputs[name][:, :, masked] == 0)  # every channel, every image


def test_random_masks_are_shared_per_resolution_and_nested():
    model = _model()
    handle = attach_pixel_masks(model, PixelMask(0.5, seed=3), torch.zeros(1, 1, 28, 28))
    handle.set_sparsity(0.2)
    small = {n: c.pixel_mask.clone() for n, c in handle.convs.items()}
    handle.set_sparsity(0.5)
    by_size = {}
    for name, conv in handle.convs.items():
        assert torch.all(conv.pixel_mask <= small[name])  # a growing sparsity only adds masked pixels
        by_size.setdefault(tuple(conv.pixel_mask.shape), []).append(conv.pixel_mask)
    for masks in by_size.values():
        assert all(torch.equal(m, masks[0]) for m in masks)
    other = attach_pixel_masks(_model(), PixelMask(0.5, seed=4), torch.zeros(1, 1, 28, 28))
    other.set_sparsity(0.5)
    assert any(not torch.equal(a.pixel_mask, b.pixel_mask) for a, b in zip(handle.convs.values(),
                                                                            other.convs.values()))


def test_magnitude_masks_drop_the_quietest_positions():
    model = _model()
    images = _images()
    handle = attach_pixel_masks(model, PixelMask(0.25, criterion="magnitude"), images[0][0][None], images)
    handle.set_sparsity(0.25)
    name, conv = next(iter(handle.convs.items()))
    handle.detach()
    outs = []
    hook = conv.register_forward_hook(lambda m, a, o: outs.append(o.abs().mean((0, 1))))
    with torch.no_grad():
        model(torch.stack([images[i][0] for i in range(len(images))]))
    hook.remove()
    energy = outs[0]
    masked = conv.pixel_mask[0, 0] == 0
    assert energy[masked].max() <= energy[~masked].min() + 1e-6


def test_spread_masks_are_shared_per_resolution_and_take_each_windows_weakest_pixel_first():
    model = _model()
    images = _images()
    handle = attach_pixel_masks(model, PixelMask(0.25, criterion="spread"), images[0][0][None], images)
    handle.set_sparsity(0.25)
    masks = {n: c.pixel_mask[0, 0] for n, c in handle.convs.items()}
    by_size: dict = {}
    for n, m in masks.items():
        by_size.setdefault(tuple(m.shape), []).append(m)
    assert all(torch.equal(ms[0], m) for ms in by_size.values() for m in ms)
    # the 28x28 maps: exactly one pixel of every 2x2 window, and there the weakest on the shared score
    name, conv = next((n, c) for n, c in handle.convs.items() if masks[n].shape == (28, 28))
    windows = (1 - masks[name]).reshape(14, 2, 14, 2).sum(dim=(1, 3))
    assert torch.equal(windows, torch.ones(14, 14))
    score = conv.pixel_score.reshape(14, 2, 14, 2).permute(0, 2, 1, 3).reshape(14, 14, 4)
    masked = (1 - masks[name]).reshape(14, 2, 14, 2).permute(0, 2, 1, 3).reshape(14, 14, 4).bool()
    assert torch.equal(score.argmin(-1), masked.float().argmax(-1))


def test_taylor_masks_take_the_positions_the_loss_does_not_depend_on_however_large():
    # a 1x1 conv whose output the classifier ignores at the top-left pixel of every 2x2 window,
    # where the images are brightest: magnitude would keep those pixels, the loss-based score masks them
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    dead = torch.zeros(8, 8, dtype=torch.bool)
    dead[::2, ::2] = True
    with torch.no_grad():
        model[2].weight.view(3, 2, 8, 8)[:, :, dead] = 0
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 8, 8, generator=g) + 2.0 * dead
    images = TensorDataset(x, torch.randint(0, 3, (64,), generator=g))
    for criterion, expect_dead in (("taylor", True), ("spread", False)):
        handle = attach_pixel_masks(model, PixelMask(0.25, criterion=criterion), x[:1], images)
        handle.set_sparsity(0.25)
        masked = model[0].pixel_mask[0, 0] == 0
        assert torch.equal(masked, dead) == expect_dead, criterion
        assert model[0].weight.grad is None  # scoring leaves no gradient behind
        handle.detach()
        del model[0].pixel_mask, model[0].pixel_score


def test_layer_selection():
    model = _model()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(selected_convs(model, PixelMask())) == convs
    assert convs[0] not in selected_convs(model, PixelMask(skip_first=True))
    no_1x1 = selected_convs(model, PixelMask(skip_1x1=True))
    assert no_1x1 and all(m.kernel_size != (1, 1) for m in no_1x1.values()) and len(no_1x1) < len(convs)
    assert all("layers.0" in n for n in selected_convs(model, PixelMask(include=r"^layers\.0\.")))
    assert not any("shortcut" in n for n in selected_convs(model, PixelMask(exclude="shortcut")))


def test_bad_settings_and_a_wrong_input_size():
    for kw in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"criterion": "best"}, {"warmup": 0.6, "ramp_end": 0.5}):
        with pytest.raises(ValueError):
            PixelMask(**kw)
    model = _model()
    attach_pixel_masks(model, PixelMask(0.2), torch.zeros(1, 1, 28, 28)).update(1.0)
    with pytest.raises(ValueError, match="one input size"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="calibration images"):
        attach_pixel_masks(_model(), PixelMask(0.2, criterion="magnitude"), torch.zeros(1, 1, 28, 28))


def test_trained_masks_are_saved_and_reload_masked(tmp_path):
    ds = write_two_class_folder(tmp_path / "ds")
    config = TrainConfig(model="resnet20", width=0.25, dataset=str(ds), epochs=2, batch_size=8, eval_images=16,
                         codecs=("zvc",), pixel_sparsity=0.3, pixel_criterion="magnitude")
    report = train(config, tmp_path / "run")
    epochs = report["training"]["epochs"]
    assert epochs[-1]["pixel_sparsity"] == pytest.approx(0.3)
    state = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert any(k.endswith("pixel_mask") for k in state)
    model = models.load("resnet20", weights=tmp_path / "run" / "weights.pt", width=0.25, in_channels=3,
                        num_classes=2)
    sparsity = mask_sparsity(model)
    assert sparsity and all(abs(s - 0.3) < 0.05 for s in sparsity.values())
    x = torch.rand(1, 3, 32, 32)  # the folder's image size
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []
    first.register_forward_hook(lambda m, a, o: seen.append(o))
    model(x)
    assert torch.all(seen[0][:, :, first.pixel_mask[0, 0] == 0] == 0)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pixel_sparsity"] == 0.3
