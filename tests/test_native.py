"""The compiled sparse-input 1x1 kernel on every instruction set this CPU has, and its place in the
compiled model: the same outputs as the dense conv, whatever the zeros."""

import pytest
import torch
from torch import nn

from actzip.runtime import compile, native

OWN = ("actzip",)  # the graph is under test, not the whole-model engine choice
pytestmark = pytest.mark.skipif(not native.available(), reason="the compiled kernels are not built")

BEST = native.ISAS.index(native.best_isa()) if native.available() else 0  # the CPU's, not the environment's
ISAS_HERE = native.ISAS[:BEST + 1]


def _use_isa(monkeypatch, isa: str) -> None:
    """Run the kernels with `isa` for this test (skipped where the CPU lacks it)."""
    if isa not in ISAS_HERE:
        pytest.skip(f"this CPU has no {isa}")
    monkeypatch.setenv("ACTZIP_ISA", isa)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)


def _reference(x, weight, bias, lo, hi, residual):
    """float64 x @ weight + bias (+ residual), clamped."""
    out = x.double() @ weight.reshape(weight.shape[0], -1).t().double() + bias.double()
    if residual is not None:
        out = out + residual.double()
    return out.clamp(lo, hi)


def _run(x, weight, bias, lo=-float("inf"), hi=float("inf"), residual=None, by_pixel=False):
    packed, packed_bias = native.packed_weight(weight, bias)
    out = torch.full((x.shape[0], weight.shape[0]), float("nan"))
    lists = torch.empty(native.lists_size(*x.shape), dtype=torch.int32)
    return native.sparse_conv1x1(x, packed, packed_bias, out, lists, lo, hi, residual, by_pixel)


def _maps(pixels, channels, zeros, seed, correlated):
    """Post-ReLU-like rows: independent zeros, or zeros shared by runs of neighbouring pixels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(pixels, channels, generator=g)
    if correlated:  # a channel is off for 8 pixels in a row, as in real maps
        off = torch.rand(-(-pixels // 8), channels, generator=g) < zeros
        x[off.repeat_interleave(8, 0)[:pixels]] = 0
    else:
        x[torch.rand(pixels, channels, generator=g) < zeros] = 0
    return x


SHAPES = [(1, 3, 5), (7, 5, 3), (33, 40, 200), (64, 96, 24), (130, 1152, 192), (9, 17, 97), (12, 512, 520),
          (260, 70, 209),  # pixel by pixel: blocks of 256 pixels, 64 input and 192 output channels
          (40, 96, 256),  # a weight padded past its width (see packed_weight)
          (300, 130, 384)]  # pixel by pixel: three panels of 128 outputs


@pytest.mark.parametrize("isa", ["c", "avx2", "avx512"])
@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize("by_pixel", [False, True])
def test_kernel_equals_the_dense_product(monkeypatch, isa, zeros, correlated, by_pixel):
    _use_isa(monkeypatch, isa)
    assert native.isa() == isa
    for i, (pixels, cin, cout) in enumerate(SHAPES):
        x = _maps(pixels, cin, zeros, i, correlated)
        weight, bias = torch.randn(cout, cin, 1, 1), torch.randn(cout)
        residual = torch.randn(pixels, cout) if i % 2 else None
        lo, hi = ((0.0, 6.0), (-float("inf"), float("inf")), (0.0, float("inf")))[i % 3]
        got = _run(x, weight, bias, lo, hi, residual, by_pixel)
        want = _reference(x, weight, bias, lo, hi, residual)
        assert not got.isnan().any()
        # float32 sums of cin products, in any order: within cin * eps of the sum of magnitudes
        scale = (x.double().abs() @ weight.reshape(cout, -1).t().double().abs()).max() + bias.abs().max()
        assert (got.double() - want).abs().max() <= 1e-6 * cin * scale + 1e-6, (pixels, cin, cout)


@pytest.mark.parametrize("by_pixel", [False, True])
def test_nan_in_an_input_reaches_its_own_pixel_only(by_pixel):
    x = _maps(8, 70, 0.5, 0, False)
    x[5, 66] = float("nan")  # in the second block of input channels
    got = _run(x, torch.randn(16, 70, 1, 1), torch.randn(16), by_pixel=by_pixel)
    assert got[5].isnan().all() and not got[[0, 1, 2, 3, 6, 7]].isnan().any()


def test_kernel_refuses_what_it_cannot_read():
    x = torch.randn(4, 8)
    weight, bias = native.packed_weight(torch.randn(4, 8, 1, 1), torch.randn(4))
    lists = torch.empty(native.lists_size(4, 8), dtype=torch.int32)
    with pytest.raises(ValueError, match="contiguous float32"):
        native.sparse_conv1x1(x.double(), weight, bias, torch.empty(4, 4), lists)
    with pytest.raises(ValueError, match="shapes"):
        native.sparse_conv1x1(x, weight, bias, torch.empty(4, 4), lists[:3])
    with pytest.raises(ValueError, match="residual"):
        native.sparse_conv1x1(x, weight, bias, torch.empty(4, 4), lists, residual=torch.empty(4, 5))


def test_torch_capability_lowers_the_kernels_isa(monkeypatch):
    monkeypatch.delenv("ACTZIP_ISA", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    assert native.isa() == "c"
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert native.isa() == ("avx2" if BEST >= 1 else "c")


class ProjectBlock(nn.Module):
    """MobileNetV2's inverted residual: 1x1 expand -> ReLU6 -> depthwise -> ReLU6 -> 1x1 project + x."""

    def __init__(self, c=24, expand=6):
        super().__init__()
        e = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e),
                                       nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.depthwise(self.expand(x)))


def test_compiled_model_on_the_zeros_path_equals_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), ProjectBlock(), ProjectBlock()).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # shifted down, so that the ReLU6 outputs are mostly zero
            m.bias.data.fill_(-0.8)
    x = torch.randn(2, 3, 17, 15)
    compiled = compile(model, x, repeats=1, engines=OWN)
    projects = [c for c in compiled.layers if c.input_zeros is not None and c.input_zeros > 0.5]
    assert len(projects) == 2 and all(c.sparse_ms is not None for c in projects)
    timed = {m.alternatives for m in compiled.modules() if getattr(m, "zeros_capable", False) and "zeros" in m.alternatives}
    skips = ("kernel-zeros", "zeros", "zeros-pixel") if native.isa() == "avx512" else ("zeros",)
    assert timed == {("kernel",) + skips}  # both kernels timed, and every pixel on the kept-pixel kernels
    for path in ("zeros", "zeros-pixel"):  # whatever the timing chose, both must give the model's output
        for m in compiled.modules():
            if getattr(m, "zeros_capable", False):
                m.path = path
        with torch.no_grad():
            want = model(x)
            assert (compiled(x) - want).abs().max() <= 1e-4 * want.abs().max()
            assert (compiled(x[:1]) - want[:1]).abs().max() <= 1e-4 * want.abs().max()  # another batch size


@pytest.mark.skipif(native.isa() != "avx512", reason="the pixel-by-pixel zeros kernel is AVX-512's")
@pytest.mark.parametrize("producer", ["fused", "rows", "map"])
def test_a_1x1_conv_skips_zeros_on_every_pixel_fused_or_on_its_producers_rows(monkeypatch, producer):
    """"kernel-zeros": the project conv skips its input's zeros on each band of its fused depthwise
    conv, on the kept rows it hands over (the project's weight past PROJECT_WEIGHT_BYTES), or on
    the full map of a dense depthwise conv; each with 1 and 2 threads, the bands shared between
    threads at batch 1, and (on the kernels alone) an image with NaN; and with AVX2 only."""
    import actzip.runtime.conv as conv_module
    from actzip.runtime.compile import link_kept_rows

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), ProjectBlock()).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.fill_(-0.8)
    x = torch.randn(2, 3, 17, 15)  # 255 pixels: 6 bands
    if producer != "map":  # oneDNN's fused clamp in the dense depthwise conv does not keep NaN
        x[1, :, 3, 4] = float("nan")
    compiled = compile(model, x, repeats=1, engines=OWN, verify=False)
    monkeypatch.setattr(native, "WORK_PER_THREAD", 1)  # two threads even on this small block
    if producer == "rows":
        monkeypatch.setattr(conv_module, "PROJECT_WEIGHT_BYTES", 0)
    convs = [m for m in compiled.modules() if isinstance(m, conv_module.CompiledConv2d)]
    for m in convs:
        m.path = "kernel-zeros" if m.zeros_capable and m.kernel_size == (1, 1) and m.in_channels > 24 else "kernel"
    if producer == "map":
        convs[2].path = "dense"
    link_kept_rows(compiled.graph_module)
    project = convs[3]
    assert project.path == "kernel-zeros" and (project.fused_depthwise is convs[2]) == (producer == "fused")
    _matches_at_1_and_2_threads(compiled, model, x)
    _use_isa(monkeypatch, "avx2")  # a lowered ISA: the band's rows conv, or the tile kernel
    _matches_at_1_and_2_threads(compiled, model, x)


def _matches_at_1_and_2_threads(compiled, model, x) -> None:
    """compiled(x) equals model(x), NaN where it is NaN, at 1 and 2 threads and batch 2 and 1."""
    before = torch.get_num_threads()
    try:
        with torch.no_grad():
            want = model(x)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for batch in (2, 1):
                    got = compiled(x[:batch])
                    assert torch.equal(got.isnan(), want[:batch].isnan())
                    err = (got - want[:batch]).nan_to_num().abs().max()
                    assert err <= 1e-4 * want.nan_to_num().abs().max()
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(native.isa() != "avx512", reason="the pixel-by-pixel zeros kernel is AVX-512's")
def test_a_pointwise_conv_skips_zeros_as_the_fused_producer_of_a_depthwise_conv(monkeypatch):
    """MobileNet v1's pointwise convs on "kernel-zeros" run inside the depthwise conv after them,
    their rows wrapping around its ring; at 1 and 2 threads, bands shared at batch 1."""
    from actzip.models.small import mobilenet_v1
    from actzip.runtime.compile import link_kept_rows
    from actzip.runtime.conv import CompiledConv2d

    torch.manual_seed(0)
    model = mobilenet_v1(width=0.5).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # shifted down, so that the ReLU outputs are mostly zero
            m.bias.data.uniform_(-1.0, 0.0)
    x = torch.rand(2, 1, 28, 28)
    compiled = compile(model, x, repeats=1, engines=OWN, verify=False)
    monkeypatch.setattr(native, "WORK_PER_THREAD", 1)
    convs = [m for m in compiled.modules() if isinstance(m, CompiledConv2d)]
    for m in convs:
        m.path = "kernel-zeros" if m.zeros_capable else "kernel" if m.every_pixel else m.path
    link_kept_rows(compiled.graph_module)
    producers = [m for m in convs if m.path == "kernel-zeros" and m.passes_input]
    assert len(producers) >= 3
    _matches_at_1_and_2_threads(compiled, model, x)


def test_a_hand_over_chain_runs_the_paths_of_its_fastest_side_as_timed_whole():
    """A chain's kept paths are chosen per side of the timing runs, on the chain's whole time there:
    skipping zeros in the project conv can cost more than it saves, by unfusing its depthwise conv."""
    from actzip.runtime.compile import Timings, _choose

    torch.manual_seed(0)
    compiled = compile(ProjectBlock(), torch.rand(1, 24, 6, 6), repeats=1, engines=OWN, verify=False)
    expand, depthwise, project = [m for m in compiled.modules() if getattr(m, "every_pixel", False)]
    expand.alternatives = depthwise.alternatives = ("kernel",)
    project.alternatives = ("kernel", "kernel-zeros", "zeros-pixel")
    own = {"dense": 1.0, "kernel": 0.01}
    for zeros_pixel, want in ((0.7, ("kernel", "kernel")), (0.4, ("dense", "zeros-pixel"))):
        chain = [(expand, Timings(own, [0.01, 0.01, 0.01])), (depthwise, Timings(own, [0.01, 1.0, 1.2])),
                 (project, Timings({"dense": 1.0, "kernel": 2.5, "kernel-zeros": 1.6, "zeros-pixel": zeros_pixel},
                                   [2.5, 1.6, zeros_pixel]))]
        # side 0 runs the chain in 2.52 ms, side 1 in 2.61 (its 1.6 ms alone would look faster)
        got = [_choose("conv", c, (1, 24, 6, 6), t, 0.5, chain).path for c, t in (chain[0], chain[2])]
        assert tuple(got) == want


def test_without_the_compiled_kernels_the_runtime_warns_and_runs_dense(monkeypatch):
    monkeypatch.setattr(native, "library", lambda: None)
    assert not native.available() and native.isa() == "none"
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), ProjectBlock()).eval()
    x = torch.randn(2, 3, 9, 9)
    with pytest.warns(UserWarning, match="not built"):
        compiled = compile(model, x, repeats=1, engines=OWN)
    assert all(c.path == "dense" for c in compiled.layers)
    with torch.no_grad():
        assert (compiled(x) - model(x)).abs().max() <= 1e-4 * model(x).abs().max()


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("by_pixel", [False, True])
def test_kernels_split_between_threads_give_the_same_rows(threads, by_pixel):
    before = torch.get_num_threads()
    x = _maps(1030, 1152, 0.7, 3, True)  # enough work for every thread, and a tile split unevenly
    weight, bias = torch.randn(192, 1152, 1, 1), torch.randn(192)
    try:
        torch.set_num_threads(1)
        one = _run(x, weight, bias, 0.0, 6.0, by_pixel=by_pixel)
        torch.set_num_threads(threads)
        assert torch.equal(_run(x, weight, bias, 0.0, 6.0, by_pixel=by_pixel), one)  # the same sums, row by row
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


POOLS = [((8, 64, 20, 20), 3, 2, 1), ((3, 5, 9, 7), 2, 2, 0), ((2, 20, 11, 13), 3, 1, 1), ((1, 17, 6, 6), 3, 2, 1),
         ((2, 100, 9, 8), 5, 3, 2), ((1, 1, 1, 1), 1, 1, 0)]


@pytest.mark.parametrize("isa", ["c", "avx2", "avx512"])
def test_max_pool_equals_pytorch_nan_included(monkeypatch, isa):
    from actzip.runtime.pool import CompiledMaxPool2d

    _use_isa(monkeypatch, isa)
    for i, (shape, k, s, p) in enumerate(POOLS):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(i)).contiguous(memory_format=torch.channels_last)
        x[0, 0, 0, 0] = float("nan")  # a NaN reaches every window over it, as in PyTorch
        x[-1, -1, -1, -1] = -float("inf")
        got, want = CompiledMaxPool2d(k, s, p)(x), nn.functional.max_pool2d(x, k, s, p)
        assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got.isnan(), want.isnan()), shape
        assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0)), shape


def test_max_pool_falls_back_to_pytorch_where_the_kernel_does_not_fit():
    from actzip.runtime.pool import CompiledMaxPool2d

    x = torch.randn(2, 3, 9, 9)
    for pool in (CompiledMaxPool2d(3, 2, 1, ceil_mode=True), CompiledMaxPool2d(3, 1, 1, dilation=2),
                 CompiledMaxPool2d(3, 2, 1)):  # the last: a contiguous (not channels_last) input
        want = nn.MaxPool2d(pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode)(x)
        assert torch.equal(pool(x), want)
    assert not CompiledMaxPool2d(3, 2, 1).fits(x)


# channels, kernel, stride, dilation
DEPTHWISE = [(17, 3, 1, 1), (40, 5, 2, 1), (100, 3, 1, 1), (130, 3, 2, 1), (64, 3, 1, 1), (16, 1, 1, 1), (24, 3, 1, 2)]


@pytest.mark.parametrize("isa", ["c", "avx2", "avx512"])
def test_depthwise_kernel_reads_a_masked_input_as_its_value(monkeypatch, isa):
    """The producer's masked pixels hold NaN here: the kernel must read its masked value instead."""
    from actzip.runtime.conv import CompiledConv2d, Workspace
    from actzip.runtime.fold import MaskedConv2d

    _use_isa(monkeypatch, isa)
    for i, (c, k, stride, dilation) in enumerate(DEPTHWISE):
        g = torch.Generator().manual_seed(i)
        pad = dilation * (k // 2)
        base = nn.Conv2d(c, c, k, stride, pad, dilation, groups=c)
        ho, wo = ((size + 2 * pad - dilation * (k - 1) - 1) // stride + 1 for size in (11, 9))
        mask = (torch.rand(1, 1, ho, wo, generator=g) > 0.4).float()
        conv = MaskedConv2d(base, torch.randn(c, 1, k, k, generator=g), torch.randn(c, generator=g), mask,
                            torch.randn(c, generator=g))
        kept_in = (torch.rand(11 * 9, generator=g) > 0.3).nonzero().reshape(-1)
        fill_in = torch.randn(c, generator=g)
        x = torch.randn(2, c, 11, 9, generator=g).contiguous(memory_format=torch.channels_last)
        keep = torch.zeros(11 * 9, dtype=torch.bool)
        keep[kept_in] = True
        with torch.no_grad():
            want = conv(torch.where(keep.reshape(1, 1, 11, 9), x, fill_in.reshape(1, c, 1, 1))).clamp(0, 6)
        x.permute(0, 2, 3, 1).reshape(2, -1, c)[:, ~keep] = float("nan")  # never written by the producer
        fast = CompiledConv2d(conv, (0.0, 6.0), tuple(x.shape), Workspace())
        fast.path = "sparse"
        fast.read_masked_input(kept_in, fill_in)
        compact = x.permute(0, 2, 3, 1).reshape(2, -1, c)[:, kept_in].reshape(-1, c)
        for source in (x, compact):
            got = fast(source)
            assert not got.isnan().any() and (got - want).abs().max() <= 1e-5 * want.abs().max(), DEPTHWISE[i]


@pytest.mark.parametrize("isa", ["c", "avx2", "avx512"])
@pytest.mark.parametrize("with_identity", [False, True])
def test_the_fill_kernel_writes_what_numba_writes(monkeypatch, isa, with_identity):
    from actzip.runtime.rows import fill_pixels

    _use_isa(monkeypatch, isa)
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 3, 37, 5, 7  # a channel count that leaves a partial vector
    out = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    identity = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    identity[1, 3, 2, 2] = float("nan")
    pixels = torch.tensor([0, 9, 16, 17, 34])  # pixel 16 of image 1 carries the NaN
    value = torch.randn(c, generator=g)
    want = out.clone()
    fill_pixels(want, pixels.numpy(), value.numpy(), (identity, 0.0, 6.0) if with_identity else None)
    native.fill_pixels(out, pixels, value, *((identity, 0.0, 6.0) if with_identity else ()))
    assert torch.equal(out.isnan(), want.isnan()) and out.isnan().any() == with_identity
    assert torch.equal(out.nan_to_num(), want.nan_to_num())
    with pytest.raises(ValueError, match="fill_pixels takes"):
        native.fill_pixels(out, pixels.int(), value)


def _forced_saved_and_loaded(compiled, convs, path, model, x, tmp_path):
    """`convs` of `compiled` on `path` whatever the timing chose, saved and loaded: both the compiled
    and the loaded model keep the path and give the model's output, at two batch sizes."""
    from actzip.runtime import saved

    for m in convs:
        m.path = path
    saved.save(compiled, tmp_path / "model.actzip")
    loaded = saved.load(tmp_path / "model.actzip")
    assert sum(getattr(m, "path", None) == path for m in loaded.modules()) == len(convs)
    with torch.no_grad():
        want = model(x)
        scale = float(want.abs().max())
        assert scale > 0.1
        for run in (compiled, loaded):
            got = run(x)
            assert torch.isfinite(got).all() and (got - want).abs().max() <= 1e-4 * scale
            assert (run(x[:1]) - want[:1]).abs().max() <= 1e-4 * scale  # another batch size


class TapsBlock(nn.Module):
    """A residual block of 3x3 convs (the second with the add and ReLU fused), then a stride-2 one
    without padding on an odd map: the convs of `zeros-taps`."""

    def __init__(self, c, shift):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU())
        for m in (self.conv1[1], self.conv2[1]):  # shifted down: the ReLUs' outputs are mostly (or all) zero
            m.bias.data.fill_(shift)
        self.down[1].bias.data.fill_(0.5)  # and up: the output is not all zero

    def forward(self, x):
        x = torch.relu(x)
        return self.down(torch.relu(x + self.conv2(self.conv1(x))))


@pytest.mark.skipif(native.isa() != "avx512", reason="zeros-taps runs the pixel-by-pixel kernel, AVX-512's")
@pytest.mark.parametrize("shift", [-0.8, -100.0])  # 60-80 % zeros, and all zeros after the first ReLU
def test_convs_with_taps_skipping_zeros_over_their_im2col_rows_equal_the_model(tmp_path, shift):
    torch.manual_seed(0)
    model = TapsBlock(24, shift).eval()
    x = torch.randn(2, 24, 13, 11)
    compiled = compile(model, x, repeats=1, engines=OWN)
    taps = [m for m in compiled.modules() if getattr(m, "taps_zeros_capable", False)]
    assert len(taps) == 3 and all(m.alternatives[-1] == "zeros-taps" for m in taps)  # each input at least half zeros
    _forced_saved_and_loaded(compiled, taps, "zeros-taps", model, x, tmp_path)


@pytest.mark.skipif(native.isa() != "avx512", reason="the direct 3x3 kernel is AVX-512's")
@pytest.mark.parametrize("shape", [(2, 13, 11, 24, 32), (3, 5, 9, 1, 16), (2, 7, 7, 64, 64), (1, 1, 1, 3, 16),
                                   (2, 6, 17, 40, 16), (5, 9, 10, 64, 32)])  # (n, h, w, cin, cout)
@pytest.mark.parametrize("zeros", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_the_direct_3x3_kernel_equals_the_conv(shape, zeros, threads, stride):
    n, h, w, cin, cout = shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    g = torch.Generator().manual_seed(cin + cout)
    x = torch.randn(n, h, w, cin, generator=g)
    x[torch.rand(x.shape, generator=g) < zeros] = 0
    weight, bias = torch.randn(cout, cin, 3, 3, generator=g), torch.randn(cout, generator=g)
    residual = torch.randn(n, ho, wo, cout, generator=g)
    want = (torch.nn.functional.conv2d(x.permute(0, 3, 1, 2).double(), weight.double(), bias.double(), stride,
                                       padding=1).permute(0, 2, 3, 1) + residual.double()).clamp(-1.0, 2.0)
    out = torch.full((n, ho, wo, cout), float("nan"))
    masks = torch.empty(n * h * w, dtype=torch.int64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native.sparse_conv3x3(x, weight.permute(2, 3, 1, 0).contiguous(), bias, out, masks, -1.0, 2.0, residual,
                              stride)
    finally:
        torch.set_num_threads(before)
    assert torch.isfinite(out).all() and (out.double() - want).abs().max() <= 1e-4 * want.abs().max().clamp(min=1)


@pytest.mark.skipif(native.isa() != "avx512", reason="the direct 3x3 kernel is AVX-512's")
def test_the_direct_3x3_kernel_refuses_what_it_cannot_run():
    x, masks = torch.zeros(1, 4, 4, 16), torch.empty(16, dtype=torch.int64)
    for weight, out in ((torch.zeros(3, 3, 16, 24), torch.empty(1, 4, 4, 24)),  # 24 outputs
                        (torch.zeros(3, 3, 16, 16), torch.empty(1, 4, 5, 16))):  # the output's shape
        with pytest.raises(ValueError, match="sparse_conv3x3"):
            native.sparse_conv3x3(x, weight, torch.zeros(out.shape[-1]), out, masks)
    with pytest.raises(ValueError, match="sparse_conv3x3"):  # 65 input channels
        native.sparse_conv3x3(torch.zeros(1, 4, 4, 65), torch.zeros(3, 3, 65, 16), torch.zeros(16),
                              torch.empty(1, 4, 4, 16), masks)


@pytest.mark.skipif(native.isa() != "avx512", reason="zeros-3x3 is AVX-512's")
@pytest.mark.parametrize("shift", [-0.8, -100.0])
def test_narrow_3x3_convs_on_the_direct_kernel_equal_the_model(tmp_path, shift):
    torch.manual_seed(0)
    # conv1 and conv2 16 -> 16 (direct), down 16 -> 32 of stride 2 without padding (taps), then a
    # direct one of stride 2, with its input's zeros in part
    model = nn.Sequential(TapsBlock(16, shift), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU()).eval()
    model[1].bias.data.fill_(0.1)
    x = torch.randn(3, 16, 9, 13)
    compiled = compile(model, x, repeats=1, engines=OWN)
    direct = [m for m in compiled.modules() if getattr(m, "direct_zeros_capable", False)]
    assert len(direct) == 3 and all(m.alternatives == ("kernel", "zeros-3x3") for m in direct[:2])
    _forced_saved_and_loaded(compiled, direct, "zeros-3x3", model, x, tmp_path)
