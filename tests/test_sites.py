import pytest
import torch
from torch import nn

from actzip.errors import ActzipError
from actzip.sites import capture, find_sites


def test_sites_in_call_order_with_repeated_module_and_no_network_input(tiny):
    sites = find_sites(tiny, torch.randn(2, 3, 8, 8))
    assert [s.name for s in sites] == ["conv2", "conv2#2", "fc"]  # conv1 reads the network input
    assert sites[0].shape == (8, 8, 8) and sites[2].shape == (8,)
    assert sites[0].channel_axis == 1 and sites[2].channel_axis == -1


def test_callback_sees_the_tensors(tiny):
    seen = []
    with capture(tiny, lambda site, module, x: seen.append((site.name, module, x.shape))), torch.no_grad():
        tiny(torch.randn(2, 3, 8, 8))
        tiny(torch.randn(2, 3, 8, 8))
    assert [s[0] for s in seen] == ["conv2", "conv2#2", "fc"] * 2
    assert seen[0][1] is tiny.conv2 and seen[1][1] is tiny.conv2


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_hooks_are_removed_after_an_error(tiny):
    def boom(*_):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        with capture(tiny, boom), torch.no_grad():
            tiny(torch.randn(1, 3, 8, 8))
    assert _hook_count(tiny) == 0


def test_model_without_sites_is_refused():
    with pytest.raises(ActzipError, match="no Conv2d or Linear"):
        find_sites(nn.Sequential(nn.ReLU()), torch.randn(1, 3))


def test_a_changed_image_size_is_an_error(tiny):
    with pytest.raises(ActzipError, match="changed shape"):
        with capture(tiny, lambda *_: None), torch.no_grad():
            tiny(torch.randn(1, 3, 8, 8))
            tiny(torch.randn(1, 3, 9, 9))
