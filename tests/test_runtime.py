import pytest
import torch
from torch import nn

from actzip.models.small import mobilenet_v1, resnet20
from actzip.runtime import MaskedConv2d, fold_batchnorm
from actzip.sparsify import PixelMask, attach_pixel_masks


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("build", [lambda: resnet20(width=0.5), lambda: mobilenet_v1(width=0.5)])
@pytest.mark.parametrize("sparsity", [0.0, 0.3])
def test_folded_model_equals_the_masked_model(build, sparsity):
    torch.manual_seed(0)
    model = _randomize_batchnorm(build())
    x = torch.rand(3, 1, 28, 28)
    if sparsity:
        attach_pixel_masks(model, PixelMask(sparsity), x).update(1.0)
    with torch.no_grad():
        want = model(x)
        folded = fold_batchnorm(model)
        got = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    convs = [m for m in folded.modules() if isinstance(m, MaskedConv2d)]
    assert convs and all((m.pixel_mask is not None) == bool(sparsity) for m in convs)
    with torch.no_grad():
        assert torch.equal(model(x), want)  # the original model is left as it was


def test_masked_pixels_carry_the_batchnorm_of_zero_not_zero():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    model = _randomize_batchnorm(nn.Sequential(conv, bn))
    x = torch.rand(2, 4, 8, 8)
    attach_pixel_masks(model, PixelMask(0.5), x).update(1.0)
    folded = fold_batchnorm(model)
    with torch.no_grad():
        out = folded(x)
    masked = conv.pixel_mask[0, 0] == 0
    bn_of_zero = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(out[:, :, masked], bn_of_zero.reshape(1, -1, 1).expand(2, -1, int(masked.sum())))
    with pytest.raises(ValueError, match="another input size"):
        folded(torch.rand(1, 4, 10, 10))
