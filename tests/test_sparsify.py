import pytest
import torch

from actzip.macs import count_macs
from actzip.sites import capture
from actzip.sparsify import FATReLU, Hoyer, L1, attach_fatrelu, attach_penalty, calibrate_thresholds
from conftest import TensorSet, TinyNet


def _site_inputs(model, x):
    seen = {}
    with capture(model, lambda site, m, a: seen.setdefault(site.name, a.detach().clone())):
        model(x)
    return seen


# A float32 sum of n >= 0 terms, summed pairwise in whatever order the CPU's kernels take, is within
# eps * log2(n) of the exact sum: 6e-8 * 14 ~ 1e-6 for these maps, so 1e-5 against a float64 reference.
FLOAT32_SUM = 1e-5


def test_l1_is_alpha_times_mean_abs_summed_over_sites(tiny):
    tiny.train()
    x = torch.randn(4, 3, 8, 8)
    h = attach_penalty(tiny, L1(alpha=0.5, per_site={"fc": 2.0}))
    tiny(x)
    got = h.take()
    h.detach()
    seen = _site_inputs(tiny, x)
    expected = sum((2.0 if n == "fc" else 0.5) * a.double().abs().mean() for n, a in seen.items())
    assert got.item() == pytest.approx(expected.item(), rel=FLOAT32_SUM)


def test_mac_weighted_l1_weighs_each_site_by_the_macs_of_its_reader(tiny):
    tiny.train()
    x = torch.randn(4, 3, 8, 8)
    h = attach_penalty(tiny, L1(alpha=0.5, normalize="macs"))
    tiny(x)
    got = h.take()
    h.detach()
    modules = dict(tiny.named_modules())
    seen = _site_inputs(tiny, x)
    macs = {n: count_macs(modules[n.split("#")[0]], a[:1]).macs for n, a in seen.items()}  # "conv2#2": 2nd call
    assert len(set(macs.values())) == 2  # conv2 (twice) and fc differ, so a wrong weight shows
    expected = sum(0.5 * len(macs) * macs[n] / sum(macs.values()) * a.double().abs().mean() for n, a in seen.items())
    assert got.item() == pytest.approx(expected.item(), rel=FLOAT32_SUM)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_hoyer_square_value(tiny, memory_format):
    """Per sample, whatever the layout: the sums run over each sample's dimensions in place."""
    tiny.train().to(memory_format=memory_format)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=memory_format)
    h = attach_penalty(tiny, Hoyer(alpha=1.0))
    tiny(x)
    got = h.take().item()
    h.detach()
    expected = 0.0
    for a in _site_inputs(tiny, x).values():
        f = a.flatten(1)
        expected += (f.abs().sum(1) ** 2 / (f ** 2).sum(1)).mean().item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_penalty_only_in_training_and_forgotten_after_take(tiny):
    h = attach_penalty(tiny, L1(alpha=1.0))
    tiny.eval()
    tiny(torch.randn(2, 3, 8, 8))
    assert h.take().item() == 0.0  # eval forwards are not penalised
    tiny.train()
    with torch.no_grad():
        tiny(torch.randn(2, 3, 8, 8))
    assert h.take().item() == 0.0
    tiny(torch.randn(2, 3, 8, 8))
    assert h.take().item() > 0
    assert h._terms == []  # nothing kept between steps
    h.detach()
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in tiny.modules()) == 0


def test_l1_fine_tuning_makes_activations_sparser():
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 5, (64,))

    def zeros_after(alpha):
        torch.manual_seed(1)
        model = TinyNet().train()
        h = attach_penalty(model, L1(alpha=alpha))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(60):
            loss = torch.nn.functional.cross_entropy(model(x), y) + h.take()
            opt.zero_grad()
            loss.backward()
            opt.step()
        h.detach()
        a = _site_inputs(model.eval(), x)["conv2"]
        return (a == 0).float().mean().item()

    assert zeros_after(1.0) > zeros_after(0.0) + 0.1


def test_fatrelu_reaches_the_target_extra_sparsity(tiny):
    torch.manual_seed(0)
    images = TensorSet(torch.randn(64, 3, 8, 8))
    before = _site_inputs(tiny, images.x)
    thresholds = calibrate_thresholds(tiny, images, FATReLU(extra_sparsity=0.2))
    assert set(thresholds) == {"conv2", "conv2#2"}  # fc reads signed values: left alone
    h = attach_fatrelu(tiny, thresholds)
    with torch.no_grad():
        after = _site_inputs(tiny, images.x)
    h.detach()
    extra = (after["conv2"] == 0).float().mean() - (before["conv2"] == 0).float().mean()
    assert 0.15 < extra.item() < 0.25  # target 0.2; bins are 1/16 octave
    kept = after["conv2"] != 0
    assert torch.equal(after["conv2"][kept], before["conv2"][kept])  # survivors are untouched
    with torch.no_grad():
        assert torch.equal(_site_inputs(tiny, images.x)["conv2"], before["conv2"])  # detached


def test_bad_configs():
    with pytest.raises(ValueError):
        L1(alpha=-1)
    with pytest.raises(ValueError):
        FATReLU(extra_sparsity=1.0)


def _reference_penalty(config, acts):
    total = 0
    for a in acts:
        flat = a.flatten(1)
        if isinstance(config, L1):
            total = total + config.alpha * (a.abs().mean() if config.normalize == "mean" else a.abs().sum() / a.shape[0])
        else:
            total = total + config.alpha * (flat.abs().sum(1) ** 2 / (flat ** 2).sum(1)).mean()
    return total


@pytest.mark.parametrize("config", [L1(alpha=0.3), L1(alpha=0.3, normalize="sum"), Hoyer(alpha=0.2)])
def test_penalty_gradients_equal_autograd_of_the_formula(config):
    """The penalties' hand-written gradients (hooks, custom Function) against autograd through the
    plain formula, on the parameters of a model with a reused module; TinyNet has sites behind a
    ReLU (the g + c fast path) and a signed one (fc)."""
    torch.manual_seed(0)
    model = TinyNet().train()
    x = torch.randn(4, 3, 8, 8)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    h = attach_penalty(model, config)
    out = model(x)
    ours = grads(out.square().mean() + h.take())
    h.detach()
    acts = []
    with capture(model, lambda site, m, a: acts.append(a)):
        out = model(x)
    ref = grads(out.square().mean() + _reference_penalty(config, acts))
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)  # float32: two equal formulas, rounded apart
