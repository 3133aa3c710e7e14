import contextlib
import gc

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


# -- the compiled runtime ------------------------------------------------------------------------

from actzip.errors import ActzipWarning  # noqa: E402
from actzip.runtime import CompiledConv2d, compile  # noqa: E402
from actzip.runtime import native  # noqa: E402
from actzip.runtime.compile import _chains, _hand_over, _hand_over_pairs  # noqa: E402
from actzip.runtime.conv import Workspace  # noqa: E402

OWN = ("actzip",)  # these tests check actzip's graph, not the whole-model engine choice
from actzip.runtime.fold import folded  # noqa: E402


def _masked_conv(conv: nn.Conv2d, x: torch.Tensor, sparsity: float) -> MaskedConv2d:
    """conv + a random BatchNorm, masked at `sparsity`, folded: the reference the runtime must match."""
    model = _randomize_batchnorm(nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels)))
    attach_pixel_masks(model, PixelMask(sparsity), x).update(1.0)
    return folded(conv, model[1])


CONVS = {  # name: (in, out, kernel, stride, padding, groups, dilation)
    "1x1": (16, 24, 1, 1, 0, 1, 1),
    "1x1 stride 2": (16, 24, 1, 2, 0, 1, 1),
    "3x3": (16, 24, 3, 1, 1, 1, 1),
    "3x3 stride 2": (16, 24, 3, 2, 1, 1, 1),
    "3x3 no padding": (8, 12, 3, 1, 0, 1, 1),
    "5x5 stride 2 dilated": (8, 12, 5, 2, 4, 1, 2),
    "depthwise 3x3": (16, 16, 3, 1, 1, 16, 1),
    "depthwise 3x3 stride 2": (16, 16, 3, 2, 1, 16, 1),
    "grouped": (16, 24, 3, 1, 1, 4, 1),
    "3x3 wide (taps in blocks)": (704, 100, 3, 1, 1, 1, 1),
    "3x3, three output panels": (8, 130, 3, 1, 1, 1, 1),
    "3x3, one input channel": (1, 16, 3, 1, 1, 1, 1),  # the weight stays in registers (kernels.c)
    "3x3 stride 2, one input channel, 10 outputs": (1, 10, 3, 2, 1, 1, 1),
}


def _reference(name: str, seed: int, images: int = 3) -> tuple[MaskedConv2d, torch.Tensor, tuple]:
    """CONVS[name] masked at 0.4 and folded (`_masked_conv`), an input for it, and its geometry."""
    geometry = CONVS[name]
    cin, cout, k, stride, padding, groups, dilation = geometry
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=False)
    x = torch.randn(images, cin, 15, 13)
    return _masked_conv(conv, x, 0.4), x, geometry


@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("bounds", [None, (0.0, 6.0)])
@pytest.mark.parametrize("tile", [4, 6])  # the kept-pixel kernel's tiles on AMD and on Intel CPUs
def test_both_paths_equal_the_masked_conv(monkeypatch, name, bounds, tile):
    monkeypatch.setattr(native, "rows_tile_pixels", lambda cin: tile)
    ref, x, (cin, cout, _, _, _, groups, _) = _reference(name, 0)
    with torch.no_grad():
        want = ref(x)
        if bounds:
            want = want.clamp(*bounds)
        fast = CompiledConv2d(ref, bounds, tuple(x.shape), Workspace())
        paths = [fast.dense] + ([fast.sparse] if fast.sparse_capable else [])
        for path in paths:
            got = path(x.contiguous(memory_format=torch.channels_last))
            assert got.shape == want.shape
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), path.__name__
            got = path(x[:1].contiguous(memory_format=torch.channels_last))  # another batch size
            assert (got - want[:1]).abs().max() <= 1e-4 * want.abs().max(), path.__name__
    assert fast.sparse_capable == (groups == 1 or groups == cin == cout and native.available())


@pytest.mark.parametrize("name", ["3x3", "3x3 stride 2", "1x1"])
@pytest.mark.parametrize("residual", [False, True])
def test_without_the_compiled_kernels_the_sparse_path_gathers_multiplies_and_expands(monkeypatch, name, residual):
    """rows.py's fallback: the kept pixels' im2col rows through oneDNN, then kept rows or the masked
    value at every pixel (plus the identity, clamped, on a residual conv)."""
    monkeypatch.setattr(native, "library", lambda: None)
    ref, x, _ = _reference(name, 2)
    with torch.no_grad():
        identity = torch.randn_like(ref(x)) if residual else None
        want = (ref(x) + identity).clamp(min=0) if residual else ref(x).clamp(min=0)
        fast = CompiledConv2d(ref, (0.0, float("inf")), tuple(x.shape), Workspace(), residual=residual)
        assert fast.sparse_capable and not fast.native
        got = fast.sparse(x.contiguous(memory_format=torch.channels_last), identity)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("k, stride, hw, c", [(3, 1, (15, 13), 24), (3, 2, (15, 13), 24), (5, 2, (9, 12), 24),
                                              (5, 1, (4, 3), 24), (3, 1, (6, 21), 8), (3, 1, (5, 20), 16),
                                              (3, 2, (7, 25), 32), (3, 1, (5, 19), 40), (5, 1, (7, 22), 16),
                                              (5, 1, (6, 21), 32), (3, 1, (5, 20), 64), (5, 1, (6, 19), 56),
                                              (3, 2, (7, 19), 48)])
def test_an_unmasked_depthwise_conv_on_actzips_kernel_equals_the_conv(k, stride, hw, c):
    """Pixels along a row away from the border run 8 or 4 at a time from the first one's taps,
    32 channels at a time, then 8-31 channels (kernels.c's runs): rows 19-25 wide give runs of both,
    and tiles around them. At stride 1 a run loads each input vector once for the 3 or 5 taps of a
    kernel row that read it."""
    if not native.available():
        pytest.skip("the compiled kernels are not built")
    torch.manual_seed(0)
    conv = nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
    x = torch.randn(3, c, *hw)
    model = _randomize_batchnorm(nn.Sequential(conv, nn.BatchNorm2d(c), nn.ReLU6()))
    ref = folded(conv, model[1])
    with torch.no_grad():
        want = model(x)
        fast = CompiledConv2d(ref, (0.0, 6.0), tuple(x.shape), Workspace())
        assert fast.paths() == ("dense", "kernel") and not fast.masked
        fast.path = "kernel"
        for n in (3, 1):  # and another batch size
            got = fast(x[:n].contiguous(memory_format=torch.channels_last))
            assert got.shape == want[:n].shape
            assert (got - want[:n]).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("cout, stride, hw", [(16, 1, (7, 21)), (10, 1, (5, 26)), (16, 2, (9, 35)), (3, 1, (4, 9))])
def test_a_one_channel_3x3_conv_on_actzips_kernel_equals_the_conv(cout, stride, hw):
    """A one-channel stem keeps its weight in registers and runs 8 pixels whose taps are all inside
    the input at once, the rest one by one (kernels.c's rows_narrow): rows 9-35 wide give both,
    and runs that a row's end or the batch's end cuts short."""
    if not native.available():
        pytest.skip("the compiled kernels are not built")
    torch.manual_seed(0)
    conv = nn.Conv2d(1, cout, 3, stride, 1, bias=False)
    x = torch.randn(3, 1, *hw)
    x[1, 0, 2, 3] = float("inf")  # its neighbours saturate as in the conv, and no pad tap reads it
    model = _randomize_batchnorm(nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU6()))
    ref = folded(conv, model[1])
    with torch.no_grad():
        want = model(x)
        fast = CompiledConv2d(ref, (0.0, 6.0), tuple(x.shape), Workspace())
        fast.path = "kernel"
        for n in (3, 1):  # and another batch size
            got = fast(x[:n].contiguous(memory_format=torch.channels_last))
            assert got.shape == want[:n].shape
            assert (got - want[:n]).abs().max() <= 1e-4 * 6  # a NaN fails this too


@pytest.mark.parametrize("cin, cout, stride", [(32, 16, 1), (16, 24, 1), (8, 130, 1), (48, 64, 1), (16, 24, 2)])
@pytest.mark.parametrize("tile", [4, 6])  # the tiles on AMD and on Intel CPUs
@pytest.mark.parametrize("residual", [False, True])
def test_an_unmasked_1x1_conv_on_actzips_kernel_equals_the_conv(monkeypatch, cin, cout, stride, tile, residual):
    """Full tiles of a 1x1 conv whose rows follow one another run with constant sizes (kernels.c's
    rows_1x1_tile): one to four vectors, a partial last one, three panels; the 15x13 maps leave a
    short tile at the batch's end to the general tile, and at stride 2 the input rows do not follow."""
    if not native.available():
        pytest.skip("the compiled kernels are not built")
    monkeypatch.setattr(native, "rows_tile_pixels", lambda cin: tile)
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
    x = torch.randn(3, cin, 15, 13)
    model = _randomize_batchnorm(nn.Sequential(conv, nn.BatchNorm2d(cout)))
    ref = folded(conv, model[1])
    with torch.no_grad():
        identity = torch.randn_like(model(x)) if residual else None
        want = (model(x) + identity if residual else model(x)).clamp(0.0, 6.0)
        fast = CompiledConv2d(ref, (0.0, 6.0), tuple(x.shape), Workspace(), residual=residual)
        fast.path = "kernel"
        for n in (3, 1):  # and another batch size
            got = fast(x[:n].contiguous(memory_format=torch.channels_last),
                       identity[:n].contiguous(memory_format=torch.channels_last) if residual else None)
            assert got.shape == want[:n].shape
            assert (got - want[:n]).abs().max() <= 1e-4 * 6  # a NaN fails this too


def test_a_depthwise_table_knows_which_pixels_read_one_step_after_the_one_before():
    rows = torch.tensor([[-1, 0, 8], [0, 8, 16], [8, 16, 24], [16, 24, -1], [40, 48, 56], [48, 56, 64]])
    assert native.tap_steps(rows).tolist() == [0, 8, 0, 0, 8, 0]  # padding, a jump, the last pixel: 0


def test_compile_times_actzips_kernel_for_unmasked_depthwise_convs():
    torch.manual_seed(0)
    model = _randomize_batchnorm(mobilenet_v1(width=0.5))
    x = torch.rand(2, 1, 28, 28)
    compiled = compile(model, x, repeats=1, engines=OWN)
    depthwise = [c for c in compiled.layers if c.groups > 1]
    assert depthwise and all(c.dense_ms is not None and c.sparse_ms is not None for c in depthwise)
    assert all(c.path in ("dense", "kernel") and c.sparsity is None for c in depthwise)
    for m in compiled.modules():  # whatever the timing chose, the kernel path must give the model's output
        if getattr(m, "every_pixel", False):
            m.path = "kernel"
    with torch.no_grad():
        assert (compiled(x) - model(x)).abs().max() <= 1e-4 * model(x).abs().max()


@pytest.mark.parametrize("name", ["1x1", "3x3", "3x3 stride 2", "3x3, one input channel"])
@pytest.mark.parametrize("bounds", [None, (0.0, float("inf"))])
def test_residual_conv_adds_before_its_activation_on_both_paths(name, bounds):
    ref, x, _ = _reference(name, 1, images=2)
    with torch.no_grad():
        identity = torch.randn_like(ref(x))
        want = ref(x) + identity
        if bounds:
            want = want.clamp(*bounds)
        fast = CompiledConv2d(ref, bounds, tuple(x.shape), Workspace(), residual=True)
        for path in (fast.dense, fast.sparse):
            got = path(x.contiguous(memory_format=torch.channels_last), identity)
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), path.__name__
        with pytest.raises(ValueError, match="residual"):
            fast(x)


@pytest.mark.skipif(not native.available(), reason="the kept-pixel kernel is compiled")
@pytest.mark.parametrize("name", ["1x1", "3x3 stride 2", "3x3 wide (taps in blocks)", "3x3, three output panels",
                                  "3x3, one input channel"])
@pytest.mark.parametrize("residual", [False, True])
def test_the_kept_pixel_kernel_writes_the_masked_pixels_in_its_own_pass(monkeypatch, name, residual):
    """Every masked pixel of the full output (between kept ones, before the first and after the
    last) gets its value from the kernel's pass: no second pass fills them, and none is left as
    the output buffer held it (NaN here)."""
    ref, x, _ = _reference(name, 2, images=2)
    fast = CompiledConv2d(ref, (0.0, 6.0), tuple(x.shape), Workspace(), residual=residual)
    assert 0 < fast.kept_pixels.numel() < fast.output_hw[0] * fast.output_hw[1]
    monkeypatch.setattr(native, "fill_pixels", lambda *a, **k: pytest.fail("a second pass filled the masked pixels"))
    monkeypatch.setattr(CompiledConv2d, "_rows_output", lambda self, n: torch.full((n, *self.output_hw, self.out_channels),
                                                                                  float("nan")))
    with torch.no_grad():
        identity = torch.randn_like(ref(x)) if residual else None
        want = (ref(x) + (identity if residual else 0)).clamp(0.0, 6.0)
        got = fast.sparse(x.contiguous(memory_format=torch.channels_last), identity)
    assert not got.isnan().any() and (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_asymmetric_static_padding_of_efficientnet_ports():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, 2, bias=False)
    conv.static_padding = nn.ZeroPad2d((0, 1, 0, 1))  # TF "same" at stride 2, as the Lite0 port pads
    x = torch.randn(2, 8, 12, 12)
    model = _randomize_batchnorm(nn.Sequential(conv, nn.BatchNorm2d(8)))
    model[0].forward = lambda t, c=conv: nn.Conv2d.forward(c, c.static_padding(t))
    attach_pixel_masks(model, PixelMask(0.3), x).update(1.0)
    ref = folded(conv, model[1])
    with torch.no_grad():
        want = model(x)
        fast = CompiledConv2d(ref, None, tuple(x.shape), Workspace())
        for path in (fast.dense, fast.sparse):
            got = path(x.contiguous(memory_format=torch.channels_last))
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("build", [lambda: resnet20(width=0.5), lambda: mobilenet_v1(width=0.5)])
def test_compiled_model_equals_the_masked_model_on_either_path(build):
    torch.manual_seed(0)
    model = _randomize_batchnorm(build())
    x = torch.rand(4, 1, 28, 28)
    attach_pixel_masks(model, PixelMask(0.3), x).update(1.0)
    compiled = compile(model, x, repeats=1, engines=OWN)
    with torch.no_grad():
        want = model(x)
        assert (compiled(x) - want).abs().max() <= 1e-4 * want.abs().max()
        convs = [m for m in compiled.modules() if isinstance(m, CompiledConv2d)]
        assert len(convs) == len(compiled.layers) and all(m.masked for m in convs)
        fused = [m for m in convs if m.bounds is not None]
        assert fused and not any(isinstance(m, nn.BatchNorm2d) for m in compiled.modules())
        # every block's add (and the ReLU after it) runs inside its conv; MobileNet-V1 has none
        blocks = sum(type(m).__name__ == "BasicBlock" for m in model.modules())
        assert sum(m.residual for m in convs) == blocks and (blocks == 9) == hasattr(model, "layers")
        for m in convs:  # the per-layer choice must not matter for the result
            m.path = "sparse" if m.sparse_capable else "dense"
            m.feeds_kept_only = False
        assert (compiled(x) - want).abs().max() <= 1e-4 * want.abs().max()
        # nor must handing kept rows over (MobileNet's pointwise -> depthwise -> pointwise chains)
        pairs = _hand_over_pairs(compiled.graph_module)
        _hand_over(dict(compiled.graph_module.named_modules()), pairs)
        handing = [m for m in convs if m.feeds_kept_only]
        assert bool(handing) == any(m.groups > 1 for m in convs)
        assert (compiled(x) - want).abs().max() <= 1e-4 * want.abs().max()
    report = compiled.report()
    assert report["convs"] == len(convs) and report["max_abs_error"] <= 1e-4 * float(want.abs().max())
    chosen = {c.name: c for c in compiled.layers if c.dense_ms is not None}
    chains = _chains(pairs, set(chosen))
    for c in chosen.values():  # the faster path, of the conv alone or of its hand-over chain
        timed = [chosen[n] for n in chains.get(c.name, [c.name])]
        faster = sum(t.sparse_ms for t in timed) < sum(t.dense_ms for t in timed)
        assert c.path == ("sparse" if faster else "dense"), c.name
    assert chosen and (len(chains) > 0) == any(m.groups > 1 for m in convs)
    assert "masked convs run sparse" in compiled.summary()


def test_a_compiled_forward_calls_its_modules_without_getattr_chains(monkeypatch):
    """The same output as FX's own code, each module still called as a module (its hooks run), and
    no container reached through Module.__getattr__ on the way."""
    model = _randomize_batchnorm(mobilenet_v1(width=0.5))
    x = torch.rand(2, 1, 28, 28)
    attach_pixel_masks(model, PixelMask(0.3), x).update(1.0)
    compiled = compile(model, x, repeats=1, engines=OWN)
    gm = compiled.graph_module
    calls = []
    gm.get_submodule("features.3.0").register_forward_hook(lambda *args: calls.append("hook"))
    looked_up = []
    getattr_of_module = nn.Module.__getattr__
    def spy(module, name):
        looked_up.append(name)
        return getattr_of_module(module, name)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = type(gm).forward(gm, xc)  # FX's code: getattr(getattr(self.features, "3"), "0")
        monkeypatch.setattr(nn.Module, "__getattr__", spy)
        got = gm(xc)
    assert torch.equal(got, want)
    assert calls == ["hook", "hook"]  # once by FX's code, once by the compiled forward
    assert "features" not in looked_up and "3" not in looked_up


def test_compiled_model_refuses_another_input_size():
    model = _randomize_batchnorm(resnet20(width=0.5))
    x = torch.rand(2, 1, 28, 28)
    attach_pixel_masks(model, PixelMask(0.2), x).update(1.0)
    compiled = compile(model, x, repeats=1, engines=OWN)
    with torch.no_grad():
        compiled(torch.rand(5, 1, 28, 28))  # another batch size is fine
        with pytest.raises(ValueError, match="compiled for 28x28 inputs, got 32x32"):
            compiled(torch.rand(2, 1, 32, 32))


def test_model_without_masks_says_so_and_runs_the_faster_of_onednn_and_actzips_kernels():
    model = _randomize_batchnorm(resnet20(width=0.5))
    x = torch.rand(2, 1, 28, 28)
    compiled = compile(model, x, repeats=1, engines=OWN)
    # its ReLU maps have zeros: a 3x3 conv may skip them (test_native), else dense or actzip's kernels
    assert all(c.path in ("dense", "kernel", "zeros-3x3", "zeros-taps") and c.sparsity is None for c in compiled.layers)
    if native.available():  # every conv timed on actzip's kernels, every pixel kept
        assert all(c.dense_ms is not None and c.sparse_ms is not None for c in compiled.layers)
    assert compiled.report()["sparse_convs"] == 0 and "no pixel masks" in compiled.summary()
    with torch.no_grad():
        assert (compiled(x) - model(x)).abs().max() <= 1e-4 * model(x).abs().max()
        for m in compiled.modules():  # either path, whatever was measured
            if isinstance(m, CompiledConv2d):
                m.path = "kernel" if m.every_pixel else "dense"
        assert (compiled(x) - model(x)).abs().max() <= 1e-4 * model(x).abs().max()


def test_engines_are_timed_in_turns_each_after_an_untimed_call(monkeypatch):
    """Each round gives each engine one untimed call after the idle gap (it finds cold caches, and
    timed alone it had handed a faster graph to onnxruntime), then its timed calls in a row."""
    import importlib

    compile_module = importlib.import_module("actzip.runtime.compile")  # the module, not the function
    monkeypatch.setattr(compile_module, "IDLE_GAP", 0.0)
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = compile_module.time_in_turns(runs, rounds=2, per_round=3)
    assert calls == (["a"] * 4 + ["b"] * 4) * 2
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6} and all(t >= 0 for v in times.values() for t in v)


@pytest.mark.parametrize("sparsity", [0.0, 0.3])
def test_the_faster_engine_computes_the_masked_model(sparsity):
    model = _randomize_batchnorm(mobilenet_v1(width=0.5))
    x = torch.rand(3, 1, 28, 28)
    if sparsity:
        attach_pixel_masks(model, PixelMask(sparsity), x).update(1.0)
    compiled = compile(model, x, repeats=2)
    assert set(compiled.engine_ms) == {"actzip", "onnxruntime"}
    faster = min(compiled.engine_ms, key=compiled.engine_ms.get)
    assert compiled.engine == faster and compiled.report()["engine"] == faster
    for engine in ("actzip", "onnxruntime"):  # whichever won, both must compute the masked model
        compiled.engine = engine
        with torch.no_grad():
            want = model(x)
            assert (compiled(x) - want).abs().max() <= 1e-4 * want.abs().max(), engine
            assert (compiled(x[:1]) - want[:1]).abs().max() <= 1e-4 * want.abs().max(), engine
            with pytest.raises(ValueError, match="compiled for 28x28"):
                compiled(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="engines"):
        compile(model, x, engines=("onnxruntime",))


def test_onnxruntime_baseline_computes_the_same_model():
    from actzip.runtime.onnx import onnxruntime_session

    model = _randomize_batchnorm(mobilenet_v1(width=0.5))
    x = torch.rand(3, 1, 28, 28)
    run = onnxruntime_session(model, x)
    with torch.no_grad():
        want = model(x)
    for batch in (x, x[:1]):  # the batch size may change
        got = torch.from_numpy(run(batch))
        assert (got - want[:len(batch)]).abs().max() <= 1e-4 * want.abs().max()


def test_onnxruntime_baseline_takes_inputs_in_any_memory_layout():
    """channels_last and strided inputs reach onnxruntime as the NCHW values they hold."""
    from actzip.runtime.onnx import onnxruntime_session

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.rand(2, 3, 16, 32)[..., ::2]  # strided: every other column
    run = onnxruntime_session(model, x.contiguous())
    with torch.no_grad():
        want = model(x)
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):
        got = torch.from_numpy(run(layout))
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_runtime_benchmark_reports_both_speedups_and_checks_its_input():
    from actzip.runtime.bench import benchmark_runtime

    model = _randomize_batchnorm(resnet20(width=0.5))
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="no pixel masks"):
        benchmark_runtime(model, x)
    r = benchmark_runtime(model, x, 0.3, rounds=1, per_round=1)
    dense = {"eager_channels_last", "eager_contiguous", "onnxruntime"}
    assert set(r["ms"]) == dense | {"compiled", "compiled_dense", "actzip_graph"}  # onnxruntime: a test dependency
    assert r["engine"] in ("actzip", "onnxruntime") and r["actzip_graph_speedup"] > 0
    fastest = min(dense, key=r["ms"].get)
    assert r["baseline"] == fastest and r["speedup"] == pytest.approx(r["ms"][fastest] / r["ms"]["compiled"])
    assert r["speedup_over"]["onnxruntime"] == pytest.approx(r["ms"]["onnxruntime"] / r["ms"]["compiled"])
    assert r["sparsity"] == pytest.approx(0.3, abs=0.02) and r["ideal_conv_speedup"] == pytest.approx(1 / 0.7, rel=0.03)
    assert r["max_abs_error"] < 1e-4 and not any(hasattr(m, "pixel_mask") for m in model.modules())


def test_a_sparse_conv_hands_its_kept_rows_to_a_sparse_1x1_conv():
    torch.manual_seed(0)
    model = _randomize_batchnorm(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                               nn.Conv2d(16, 12, 1), nn.BatchNorm2d(12)))
    x = torch.rand(2, 8, 10, 10)
    attach_pixel_masks(model, PixelMask(0.4), x).update(1.0)  # one resolution: one shared mask
    compiled = compile(model, x, repeats=1, engines=OWN)
    first, second = [m for m in compiled.modules() if isinstance(m, CompiledConv2d)]
    first.path = second.path = "sparse"
    _hand_over(dict(compiled.graph_module.named_modules()), _hand_over_pairs(compiled.graph_module))
    assert first.feeds_kept_only and not second.feeds_kept_only
    with torch.no_grad():
        assert first(x.contiguous(memory_format=torch.channels_last)).dim() == 2  # rows, not a map
        want = model(x)
        assert (compiled(x) - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.skipif(not native.available(), reason="the depthwise kept-pixel kernel is compiled")
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("expand_path", ["dense", "sparse", "fused", "fused-project"])
def test_a_depthwise_conv_reads_only_the_kept_pixels_its_producer_writes(stride, expand_path):
    """MobileNet's expand -> depthwise -> project: the expand conv writes its kept pixels alone (as
    rows on the sparse path, in place on the dense one; fused, in bands into a ring that the
    depthwise conv reads), the depthwise conv reads the others as their masked value and hands its
    own kept rows to the project conv (or, fused into it, each band of them as it makes it)."""
    torch.manual_seed(0)
    model = _randomize_batchnorm(nn.Sequential(
        nn.Conv2d(8, 32, 1), nn.BatchNorm2d(32), nn.ReLU6(), nn.Conv2d(32, 32, 3, stride, 1, groups=32),
        nn.BatchNorm2d(32), nn.ReLU6(), nn.Conv2d(32, 12, 1), nn.BatchNorm2d(12)))
    x = torch.rand(3, 8, 11, 13)
    attach_pixel_masks(model, PixelMask(0.4), x).update(1.0)
    compiled = compile(model, x, repeats=1, engines=OWN)
    modules = dict(compiled.graph_module.named_modules())
    expand, depthwise, project = [m for m in modules.values() if isinstance(m, CompiledConv2d)]
    expand.path, depthwise.path, project.path = "dense" if expand_path == "dense" else "sparse", "sparse", "sparse"
    assert len(_hand_over(modules, _hand_over_pairs(compiled.graph_module))) == 2
    assert expand.feeds_kept_only and depthwise.feeds_kept_only and depthwise.input_kept_pixels is not None
    assert (depthwise.fused_producer is expand) == expand.passes_input == (expand_path != "dense")
    assert (project.fused_depthwise is depthwise) == depthwise.passes_input == (expand_path != "dense")
    if expand_path in ("sparse", "fused"):
        project.fuse_depthwise(None)
    if expand_path == "sparse":
        depthwise.fuse_producer(None)
    with torch.no_grad():
        rows = expand(x.contiguous(memory_format=torch.channels_last))
        assert rows.dim() == (2 if expand_path == "sparse" else 4) and (rows.shape[1] == 8) == ("fused" in expand_path)
        if expand_path == "fused-project":
            assert depthwise(rows) is rows and project(rows).shape == (3, 12, *project.output_hw)
        else:
            assert depthwise(rows).shape == (3 * depthwise.kept_pixels.numel(), 32)
        want = model(x)
        for batch in (3, 1):  # and another batch size
            assert (compiled(x[:batch]) - want[:batch]).abs().max() <= 1e-4 * want.abs().max()


def _all_on(compiled, path: str) -> list:
    """Every conv of `compiled` on `path`, kept rows handed over and blocks fused as `compile`
    would; the convs, in order."""
    modules = dict(compiled.graph_module.named_modules())
    convs = [m for m in modules.values() if isinstance(m, CompiledConv2d)]
    for m in convs:
        m.path = path
    _hand_over(modules, _hand_over_pairs(compiled.graph_module))
    return convs


class _InvertedResidual(nn.Module):
    """MobileNetV2's block with its residual add: expand 1x1, depthwise 3x3, project 1x1, + input."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU6(),
                                   nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden), nn.BatchNorm2d(hidden),
                                   nn.ReLU6(), nn.Conv2d(hidden, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.block(x)


@contextlib.contextmanager
def _num_threads(count: int):
    """PyTorch's thread count set to `count` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _masked_block(shape: tuple[int, ...], sparsity: float) -> tuple[nn.Module, torch.Tensor]:
    """An inverted residual block (expanding 3x), BatchNorm randomized, masked, and an input of `shape`."""
    torch.manual_seed(0)
    x = torch.rand(shape)
    model = _randomize_batchnorm(nn.Sequential(_InvertedResidual(shape[1], 3 * shape[1])))
    attach_pixel_masks(model, PixelMask(sparsity), x).update(1.0)
    return model, x


@pytest.mark.skipif(not native.available(), reason="the fused producer runs on the compiled kernels")
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_producers_equal_the_model_over_many_bands(threads):
    """A stem-like 3x3 stride-2 conv fused into a depthwise conv, and a 1x1 expand conv that reads
    its producer's kept rows, fused into a 5x5 stride-2 depthwise conv, each depthwise conv fused
    into the 1x1 conv after it (the first handing its kept rows on, the last adding a residual):
    maps of many bands each; with one image on two threads, the threads share its bands."""
    torch.manual_seed(0)
    model = _randomize_batchnorm(nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24),
        nn.Conv2d(24, 72, 1), nn.BatchNorm2d(72), nn.ReLU6(),
        nn.Conv2d(72, 72, 5, 2, 2, groups=72), nn.BatchNorm2d(72), nn.ReLU6(),
        nn.Conv2d(72, 40, 1), nn.BatchNorm2d(40), _InvertedResidual(40, 120)))
    x = torch.rand(3, 3, 70, 58)
    attach_pixel_masks(model, PixelMask(0.35), x).update(1.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        compiled = compile(model, x, repeats=1, engines=OWN)
        stem, first, project, expand, second, last, *block = _all_on(compiled, "sparse")
        assert first.fused_producer is stem and second.fused_producer is expand and project.feeds_kept_only
        assert project.fused_depthwise is first and last.fused_depthwise is second and block[2].fused_depthwise is block[1]
        assert block[2].residual and not block[2].feeds_kept_only
        assert len(second._ring_plan(True)[1].ends) > 8  # many bands
        with torch.no_grad():
            want = model(x)
            for batch, count in ((3, threads), (1, threads), (3, 3 - threads), (1, 3 - threads)):  # calls per count
                torch.set_num_threads(count)
                assert (compiled(x[:batch]) - want[:batch]).abs().max() <= 1e-4 * want.abs().max()
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not native.available(), reason="the fused producer runs on the compiled kernels")
def test_one_image_on_two_threads_splits_a_small_map_into_even_bands():
    """A 7x7 map's kept pixels fit in one band; with one image on two threads they go in two
    bands of (nearly) the same size, one per thread, and the block still equals the model."""
    import actzip.runtime.conv as conv_module

    model, x = _masked_block((1, 16, 7, 7), 0.3)
    with _num_threads(2):
        compiled = compile(model, x, repeats=1, engines=OWN)
        expand, depthwise, project = _all_on(compiled, "sparse")
        assert depthwise.fused_producer is expand and project.fused_depthwise is depthwise
        kept = depthwise.kept_pixels.numel()
        assert kept <= conv_module.DEPTHWISE_BAND and depthwise._band_pixels(1, True) == conv_module.DEPTHWISE_BAND
        band = depthwise._band_pixels(native.image_parts(1, 2), True)
        ends = depthwise._ring_plan(False, True, band)[1].ends.view(-1, 3)
        assert ends.shape[0] == 2 and ends[0, 1] in (kept // 2, -(-kept // 2)) and ends[1, 1] == kept
        with torch.no_grad():
            want = model(x)
            assert (compiled(x) - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.skipif(not native.available(), reason="the fused producer runs on the compiled kernels")
def test_a_narrow_depthwise_conv_without_a_project_conv_takes_a_whole_image_per_band():
    """Where no project conv reads its bands, a depthwise conv's bands hold up to BAND_FLOATS of
    its rows: MobileNet v1's 16-channel one at 28x28, fused with the stem, takes each image in one
    band instead of 17, and the model's output stays as it was."""
    from actzip.runtime.compile import link_kept_rows

    torch.manual_seed(0)
    model = _randomize_batchnorm(mobilenet_v1(width=0.5)).eval()
    x = torch.rand(2, 1, 28, 28)
    with _num_threads(1):
        compiled = compile(model, x, repeats=1, engines=OWN, verify=False)
        for m in compiled.modules():
            if getattr(m, "every_pixel", False):
                m.path = "kernel"
        link_kept_rows(compiled.graph_module)
        first = next(m for m in compiled.modules() if getattr(m, "fused_producer", None) is not None)
        assert first.in_channels == 16 and first.fused_producer.in_channels == 1 and not first.passes_input
        ends = first._ring_plan(False, False, first._band_pixels(1, False))[1].ends.view(-1, 3)
        assert ends.shape[0] == 1 and int(ends[0, 1]) == 28 * 28
        with torch.no_grad():
            want = model(x)
            assert (compiled(x) - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.skipif(not native.available(), reason="the fused producer runs on the compiled kernels")
@pytest.mark.parametrize("threads", [1, 2])
def test_a_fused_blocks_project_conv_writes_its_masked_pixels_in_its_own_pass(monkeypatch, threads):
    """The 1x1 conv at the end of a fused block writes the masked pixels between its kept rows,
    band by band (and with one image on two threads, each thread its bands'): no second pass, and no
    pixel left as the output buffer held it (NaN here)."""
    model, x = _masked_block((2, 16, 15, 13), 0.4)
    with _num_threads(threads):
        compiled = compile(model, x, repeats=1, engines=OWN)
        _, _, project = _all_on(compiled, "sparse")
        assert project.fused_depthwise is not None and project.residual and not project.feeds_kept_only
        monkeypatch.setattr(native, "fill_pixels", lambda *a, **k: pytest.fail("a second pass filled the masked pixels"))
        monkeypatch.setattr(CompiledConv2d, "_rows_output", lambda self, n: torch.full(
            (n * self.kept_pixels.numel(), self.out_channels) if self.feeds_kept_only else
            (n, *self.output_hw, self.out_channels), float("nan")))
        with torch.no_grad():
            want = model(x)
            for batch in (2, 1):
                got = compiled(x[:batch])
                assert not got.isnan().any() and (got - want[:batch]).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.skipif(not native.available(), reason="the fused producer runs on the compiled kernels")
def test_an_unmasked_inverted_residual_block_runs_fused_on_every_pixel():
    """Without masks, the kept-pixel kernels keep every pixel ("kernel") and fuse as the sparse path
    does: the expand conv into the depthwise conv, and that into the project conv."""
    torch.manual_seed(0)
    model = _randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6(),
                                               _InvertedResidual(8, 24)))
    x = torch.rand(2, 3, 30, 26)
    compiled = compile(model, x, repeats=1, engines=OWN)
    convs = _all_on(compiled, "kernel")
    _, expand, depthwise, project = convs
    assert not any(m.masked for m in convs) and depthwise.fused_producer is expand
    assert project.fused_depthwise is depthwise and project.residual
    with torch.no_grad():
        want = model(x)
        for batch in (2, 1):
            assert (compiled(x[:batch]) - want[:batch]).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.skipif(not native.available(), reason="the fused producer runs on the compiled kernels")
def test_a_1x1_conv_whose_weight_leaves_the_cache_runs_apart_from_its_depthwise_producer(monkeypatch):
    """Band by band, a 1x1 conv reads its weight once per band: past PROJECT_WEIGHT_BYTES it runs on
    the depthwise conv's kept rows instead, and says why if asked to fuse."""
    import actzip.runtime.conv as conv_module

    torch.manual_seed(0)
    model = _randomize_batchnorm(nn.Sequential(_InvertedResidual(8, 24)))
    x = torch.rand(2, 8, 12, 12)
    attach_pixel_masks(model, PixelMask(0.3), x).update(1.0)
    compiled = compile(model, x, repeats=1, engines=OWN)
    project = [m for m in compiled.modules() if isinstance(m, CompiledConv2d)][-1]
    monkeypatch.setattr(conv_module, "PROJECT_WEIGHT_BYTES", project.taps_weight.numel() * 4 - 1)
    expand, depthwise, project = _all_on(compiled, "sparse")
    assert depthwise.fused_producer is expand and project.fused_depthwise is None and not depthwise.passes_input
    with pytest.raises(ValueError, match="fits in"):
        project.fuse_depthwise(depthwise)
    with torch.no_grad():
        want = model(x)
        assert (compiled(x) - want).abs().max() <= 1e-4 * want.abs().max()


def test_a_compiled_model_leaves_the_thread_count_as_set():
    """No kernel of the runtime may start a second OpenMP pool that resets PyTorch's thread count."""
    model = _randomize_batchnorm(mobilenet_v1(width=0.5))
    x = torch.rand(2, 1, 28, 28)
    attach_pixel_masks(model, PixelMask(0.3), x).update(1.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        compiled = compile(model, x, repeats=1, engines=OWN)
        for m in compiled.modules():  # the masked-pixel fill and the row expansion run on either path
            if isinstance(m, CompiledConv2d) and m.sparse_capable:
                m.path = "sparse"
        with torch.no_grad():
            compiled(x)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not __import__("actzip.runtime.memory", fromlist=["x"]).hold_freed_memory(),
                    reason="glibc only")
@pytest.mark.parametrize("masked", [False, True])
def test_a_steady_state_forward_maps_no_fresh_pages(masked, steady_state_faults):
    """Dense, and with masks on every path the compiled kernels have (the fused producer's ring
    included)."""
    torch.manual_seed(0)
    # a 64x32x64x64 map is 32 MiB: glibc maps and unmaps anything that large on every forward
    model = _randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                               nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                               nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32),
                                               nn.ReLU(), nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16)))
    x = torch.rand(64, 3, 64, 64)
    if masked:
        attach_pixel_masks(model, PixelMask(0.3), x).update(1.0)
    compiled = compile(model, x, repeats=1, engines=OWN)
    if masked and native.available():
        modules = dict(compiled.graph_module.named_modules())
        for m in modules.values():
            if isinstance(m, CompiledConv2d) and m.sparse_capable:
                m.path = "sparse"
        _hand_over(modules, _hand_over_pairs(compiled.graph_module))
        assert any(getattr(m, "fused_producer", None) is not None for m in modules.values())
    # the compile's own garbage (reference cycles holding large tensors) goes now: freed by the
    # cyclic collector in the middle of the measured forwards, it reshapes the heap once
    gc.collect()
    with torch.no_grad():
        windows = steady_state_faults(lambda: compiled(x))
    assert min(windows) == 0, windows


@pytest.mark.parametrize("tile", [4, 6])
def test_the_kept_pixel_kernel_in_thread_shares_equals_one_thread(monkeypatch, tile):
    monkeypatch.setattr(native, "rows_tile_pixels", lambda cin: tile)
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
    x = torch.randn(2, 64, 21, 19)  # ~17 M multiply-adds: enough for two shares
    fast = CompiledConv2d(_masked_conv(conv, x, 0.4), (0.0, 6.0), tuple(x.shape), Workspace())
    xc = x.contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fast.sparse(xc)
        torch.set_num_threads(2)
        assert torch.equal(fast.sparse(xc), one)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not native.available(), reason="the kept-pixel kernel is compiled")
@pytest.mark.parametrize("isa", ["c", "avx512"])
@pytest.mark.parametrize("threads", [2, 3])
def test_a_few_kept_rows_against_many_outputs_share_the_outputs_between_threads(monkeypatch, isa, threads):
    """Fewer kept rows than output channels (a late layer at batch 1): each thread takes a share of
    the output channels, which may start inside a weight panel, and all the rows; the sums are
    those of one thread."""
    if native.ISAS.index(isa) > native.ISAS.index(native.best_isa()):
        pytest.skip(f"this CPU has no {isa}")
    monkeypatch.setenv("ACTZIP_ISA", isa)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 200, 3, 1, 1, bias=False)  # panels of 64, 64, 64 and 8 outputs
    x = torch.randn(1, 256, 5, 5)
    fast = CompiledConv2d(_masked_conv(conv, x, 0.4), (0.0, 6.0), tuple(x.shape), Workspace())
    assert fast.kept_pixels.numel() < 200
    shares = []  # (by output channels, threads) of each rows-conv call

    def run_job(job, work, real=native.run_job):
        real(job, work)
        if job.kernel == 1:
            shares.append((job.by_outputs, job.threads))

    monkeypatch.setattr(native, "run_job", run_job)
    xc = x.contiguous(memory_format=torch.channels_last)
    with _num_threads(1):
        one = fast.sparse(xc)
    with _num_threads(threads):
        assert torch.equal(fast.sparse(xc), one)
    assert shares[-1] == (1, threads)
    assert (one - fast.dense(xc)).abs().max() <= 1e-4 * one.abs().max()
