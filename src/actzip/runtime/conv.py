"""A folded conv with its activation fused, run either dense or on its kept output pixels only.

The dense path calls oneDNN through `torch.ops.mkldnn._convolution_pointwise`, the fused conv +
activation kernel that torch.compile uses on CPU, with weights reordered once into oneDNN's blocked
layout, and then writes the masked pixels' value act(BN(0)) over the masked pixels.

The sparse path computes the kept output pixels alone, with the compiled kernel of `native.py`
(`rows_conv`): an implicit GEMM that reads each kept pixel's taps straight from the channels_last
input (taps in the padding read a row of zeros, so the input is never padded or copied), and writes
each kept row in place into the full NHWC output, and the masked pixels' value between them in the
same pass (the depthwise kernel's output gets it in a pass after).
When the conv's only consumer reads nothing but its kept pixels, `feeds_kept_only` skips the fill
of the masked ones, and a sparse producer hands over its kept rows as they are (a 2-D tensor), with
no scatter here and no gather there. Two consumers do: a sparse 1x1 conv with the same mask
(MobileNet's depthwise -> project pair), and a sparse depthwise conv (the expand -> depthwise pair),
which reads the producer's masked pixels as the producer's masked value (`read_masked_input`), so
the expanded map, the largest of the block, is never written whole. A sparse producer of a sparse
depthwise conv runs inside it, band by band (`fuse_producer`), and such a depthwise conv can run in
turn inside the 1x1 conv it hands its kept rows to (`fuse_depthwise`): the whole inverted residual
block then runs band by band, in one call of the compiled kernels.
Depthwise convs have a kept-pixel kernel of their own (`native.depthwise_rows`): it reads each kept
pixel's taps from the full map or from the producer's kept rows, through a per-image table.
Without the compiled kernels, the sparse path gathers the kept pixels' im2col rows into a
preallocated buffer (one index_select), multiplies them by the weight as a oneDNN 1x1 conv and
expands them into the output (`rows.py`). (MKL's sgemm behind `torch.mm` runs at half the speed of
oneDNN on this machine's AMD CPU, so the gathered GEMM goes through oneDNN as well.) Grouped convs
other than depthwise, and depthwise convs without the compiled kernels, have only the dense path.

Two more paths serve unstructured zeros in the input of an unmasked 1x1 conv (the input of
MobileNet's and EfficientNet's project convs, after a ReLU), with the compiled kernel of `native.py`:
"zeros" skips the input channels that are zero in every pixel of a small tile (best where
neighbouring pixels share their zeros, and with large weights), "zeros-pixel" each pixel's own zero
channels (best where zeros are independent; AVX-512 only). And an unmasked conv may run "kernel":
the kept-pixel kernels with every pixel kept, which hand over rows and fuse as the sparse path does;
an unmasked 1x1 conv on that path may also skip its input's zeros pixel by pixel ("kernel-zeros"),
on the rows handed over or, fused, on each band of its depthwise producer (AVX-512 only).
An unmasked conv with taps (3x3 and the like, any stride) may skip zeros too ("zeros-taps"): its
input's im2col rows, gathered into the workspace as the path without the compiled kernels gathers
them, go through the pixel-by-pixel 1x1 kernel with the weight of all its taps (AVX-512 only).
A 3x3 conv of stride 1 or 2 and padding 1 with at most 64 input and 16, 32 or 64 output channels (the
narrow convs of small ResNets) has a direct kernel that skips its input's zeros instead, with no
gather ("zeros-3x3", `native.sparse_conv3x3`, AVX-512 only).
"""

from __future__ import annotations

import torch
from torch import nn

from . import native
from .fold import MaskedConv2d
from .rows import expand_rows, fill_pixels

CHANNELS_LAST = torch.channels_last
ZEROS_PATHS = ("zeros", "zeros-pixel")  # the two kernels that skip a 1x1 conv's input zeros (module doc)
TAPS_ZEROS_PATH = "zeros-taps"  # a conv with taps skipping its im2col rows' zeros (module doc)
DIRECT_ZEROS_PATH = "zeros-3x3"  # a narrow 3x3 conv skipping its input's zeros directly (module doc)
# the paths on the kept-pixel kernels: the kept pixels, or every pixel, or every pixel skipping zeros
KEPT_PATHS = ("sparse", "kernel", "kernel-zeros")
DEPTHWISE_BAND = 48  # depthwise kept pixels per band of a fused producer (`native.BandedCall`)
# Without a fused project conv, a band holds up to this many floats of depthwise rows (48 rows of
# 960 channels, MobileNetV2's widest), so that narrow convs pay the kernels' fixed costs per band
# and per block of pixels less often: the L1 MobileNet v1 (16-512 channels, whole images then) ran
# 0.96-0.98x the time (AMD Zen 4, batch 64, in turns). With a project conv the band buffer grows
# too: MobileNetV2 at batch 1 ran 1.05x the time with such bands, so its bands stay at 48.
BAND_FLOATS = 48 * 960
# The most weight bytes of a 1x1 conv that runs its depthwise producer band by band (`fuse_depthwise`):
# it reads its whole weight once per band, from L2 only if the weight stays there between bands
PROJECT_WEIGHT_BYTES = 512 << 10
_pointwise = torch.ops.mkldnn._convolution_pointwise
_reorder = torch.ops.mkldnn._reorder_convolution_weight


class Workspace:
    """Growing scratch buffers shared by the sparse convs of a model (they run one at a time)."""

    def __init__(self):
        self.buffers = {torch.float32: torch.empty(0), torch.int32: torch.empty(0, dtype=torch.int32)}

    def get(self, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.buffers[dtype].numel() < numel:
            self.buffers[dtype] = torch.empty(numel, dtype=dtype)
        return self.buffers[dtype][:numel]


def _total_padding(conv: MaskedConv2d) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding: the conv's own plus a static ZeroPad2d before it."""
    ph, pw = conv.padding
    left, right, top, bottom = conv.static_padding.padding if conv.static_padding is not None else (0, 0, 0, 0)
    return top + ph, bottom + ph, left + pw, right + pw


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """x as a contiguous (N, H, W, C) tensor: the layout the compiled kernels read and write."""
    return x.contiguous(memory_format=CHANNELS_LAST).permute(0, 2, 3, 1)


def _im2col_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (out, in, kh, kw) weight as the 1x1 conv over im2col rows: (out, kh*kw*in, 1, 1), in (tap,
    channel) order as `_im2col` gathers them."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1, 1, 1)


def _activation_attr(bounds: tuple[float, float] | None) -> tuple[str, list]:
    if bounds is None:
        return "none", []
    lo, hi = bounds
    return ("relu", []) if lo == 0 and hi == float("inf") else ("hardtanh", [lo, hi])


class CompiledConv2d(nn.Module):
    """conv (BatchNorm folded) -> pixel mask -> clamp to `bounds` (the fused ReLU/ReLU6), for inputs
    of spatial size `input_hw`. With `residual`, forward takes a second tensor that is added before
    the clamp (a residual block's add and ReLU in the same op). `path` is "dense" or "sparse";
    `actzip.runtime.compile` sets it."""

    def __init__(self, conv: MaskedConv2d, bounds: tuple[float, float] | None, input_shape: tuple[int, ...],
                 workspace: Workspace, residual: bool = False):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"only zero padding is compiled, not {conv.padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.bounds, self.workspace, self.residual = bounds, workspace, residual
        self.attr, self.scalars = _activation_attr(bounds)
        self.lo, self.hi = bounds if bounds is not None else (-float("inf"), float("inf"))
        self.pads = _total_padding(conv)  # top, bottom, left, right
        top, bottom, left, right = self.pads
        self.symmetric = top == bottom and left == right
        self.dense_padding = [top, left] if self.symmetric else [0, 0]  # else the input is padded first
        self.input_hw = tuple(input_shape[-2:])
        self.batch = input_shape[0]  # the batch size its weights were reordered for
        h, w = self.input_hw[0] + top + bottom, self.input_hw[1] + left + right
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        self.output_hw = ((h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1)
        weight, bias = conv.weight.detach(), conv.bias.detach()
        self.register_buffer("bias", bias.clone())
        self.register_buffer("weight", weight.clone())  # folded, plain: what `saved` writes
        self.dense_weight = _reorder(weight.contiguous(memory_format=CHANNELS_LAST),
                                     self.dense_padding, list(self.stride),
                                     list(self.dilation), self.groups, [input_shape[0], self.in_channels, h, w]
                                     if not self.symmetric else list(input_shape))
        mask = conv.pixel_mask
        self.masked = mask is not None
        self._prepare_zeros(weight, bias)
        self._gather_by_batch: dict[int, torch.Tensor] = {}  # see _gather_index
        self.path = "dense"
        self.pad_buffer: torch.Tensor | None = None  # the zero-bordered input of an asymmetric pad
        self.feeds_kept_only = False  # set by compile: the consumer reads the kept pixels alone
        self.passes_input = False  # set by compile: a conv after it runs it (`fuse_producer`, `fuse_depthwise`)
        self.fused_depthwise: CompiledConv2d | None = None  # set by compile: this conv runs it (`fuse_depthwise`)
        # an unmasked conv may run actzip's kept-pixel kernels on every pixel ("kernel"): oneDNN's
        # stride-2 depthwise convs measured 1.25-1.95x slower than them on Lite0 (AMD Zen 5), and
        # an inverted residual block fused band by band keeps its expanded map in the cache
        self.every_pixel = not self.masked and native.available() and (
            self.groups == 1 or not residual and self.groups == self.in_channels == self.out_channels)
        if self.masked or self.every_pixel:
            keep = mask if self.masked else torch.ones(self.output_hw)
            self._set_mask(keep, conv.masked_value.reshape(-1) if self.masked else torch.zeros(self.out_channels))
            self._prepare_sparse(weight, bias)

    def _prepare_zeros(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Which kernels that skip the input's zeros this conv can run, and the weights they read."""
        self.zeros_capable = (not self.masked and self.groups == 1 and self.kernel_size == (1, 1)
                              and self.stride == (1, 1) and self.pads == (0, 0, 0, 0) and native.available())
        if self.zeros_capable:
            self.packed_weight, self.packed_bias = native.packed_weight(weight, bias)
        # gathering the im2col rows writes 9x the input, which the zeros repay on small maps only:
        # the L1 resnet20's 7x7 convs (64 channels, 69-78 % zeros) ran mostly 1.1-1.4x oneDNN's
        # dense conv in the model, its 28x28 16-channel ones 0.24-0.30x (AMD Zen 4, batch 64)
        self.taps_zeros_capable = (not self.masked and self.groups == 1 and self.kernel_size != (1, 1)
                                   and native.isa() == "avx512")
        if self.taps_zeros_capable:
            self.cols_packed_weight, self.cols_packed_bias = native.packed_weight(_im2col_weight(weight), bias)
        self.direct_zeros_capable = (self.taps_zeros_capable and self.kernel_size == (3, 3)
                                     and self.stride in ((1, 1), (2, 2))
                                     and self.dilation == (1, 1) and self.pads == (1, 1, 1, 1)
                                     and self.in_channels <= native.CONV3X3_MAX_INPUTS
                                     and self.out_channels in native.CONV3X3_OUTPUTS)
        if self.direct_zeros_capable:
            self.direct_weight = weight.permute(2, 3, 1, 0).contiguous()  # (3, 3, cin, cout)

    def paths(self) -> tuple[str, ...]:
        """The paths this conv can run here (see the module doc)."""
        return (("dense",) + (("sparse",) if self.masked and self.sparse_capable else ())
                + (("kernel",) if self.every_pixel else ())
                + (("kernel-zeros",) if self.every_pixel and self.zeros_capable and native.isa() == "avx512" else ())
                + (ZEROS_PATHS if self.zeros_capable else ())
                + ((TAPS_ZEROS_PATH,) if self.taps_zeros_capable else ())
                + ((DIRECT_ZEROS_PATH,) if self.direct_zeros_capable else ()))

    def _set_mask(self, mask: torch.Tensor, value: torch.Tensor) -> None:
        """The kept and masked output pixels, and the masked pixels' value after the activation."""
        if tuple(mask.shape[-2:]) != self.output_hw:
            raise ValueError(f"pixel mask of {tuple(mask.shape[-2:])} does not fit the conv output {self.output_hw}")
        fill = value if self.residual else value.clamp(self.lo, self.hi)  # with a residual the clamp follows the add
        self.register_buffer("fill", fill.clone())
        keep = mask.reshape(-1).bool()
        self.register_buffer("masked_pixels", (~keep).nonzero().reshape(-1))
        self.register_buffer("kept_pixels", keep.nonzero().reshape(-1))
        # for each output pixel, its row among an image's kept rows, or -1
        self.register_buffer("slot", torch.full((keep.numel(),), -1, dtype=torch.long))
        # as plain ints, which every kernel call reads: a buffer's lookup goes through Module.__getattr__
        self.kept_count, self.masked_count = self.kept_pixels.numel(), self.masked_pixels.numel()
        self.slot[self.kept_pixels] = torch.arange(self.kept_count)
        self.sparsity = 1 - self.kept_count / keep.numel()

    def _prepare_sparse(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """What the sparse path of this masked conv reads, where it has one."""
        self.depthwise = self.groups == self.in_channels == self.out_channels and not self.residual
        self.sparse_capable = self.groups == 1 or self.depthwise and native.available()
        self.native = self.sparse_capable and native.available()  # kept pixels by the compiled kernel
        if self.native and self.depthwise:
            self.taps_weight = weight.reshape(self.out_channels, -1).t().contiguous()  # (taps, channels)
            self._depthwise_rows_by_input: dict[tuple, native.DepthwiseRows] = {}
            self.register_buffer("input_kept_pixels", None)  # see read_masked_input
            self.register_buffer("input_fill", None)
            self._tables_input_mask: torch.Tensor | None = None  # the producer mask its tables are for
            self.fused_producer: CompiledConv2d | None = None
            self._ring_plans: dict[tuple, tuple] = {}
            self._plans_producer: CompiledConv2d | None = None  # the producer its ring plans are for
        elif self.native:
            self.taps_weight, self.taps_bias = native.packed_taps_weight(weight, bias)
            self._kept_rows_by_batch: dict[tuple, native.KeptRows] = {}
        elif self.sparse_capable:  # else by oneDNN over gathered rows, with the im2col weight
            self.cols_weight = _im2col_weight(weight).contiguous(memory_format=CHANNELS_LAST)
            self._weight_by_batch: dict[int, torch.Tensor] = {}

    def macs(self, batch: int) -> int:
        """Multiply-accumulates of the dense conv over `batch` images."""
        kh, kw = self.kernel_size
        return batch * self.output_hw[0] * self.output_hw[1] * self.out_channels * self.in_channels // self.groups \
            * kh * kw

    def cols_bytes(self, batch: int) -> int:
        """Bytes of the im2col rows of `batch` images' kept output pixels (`_im2col`)."""
        kh, kw = self.kernel_size
        return 4 * batch * self.kept_count * kh * kw * self.in_channels

    # -- index tables --------------------------------------------------------------------------
    def _gather_index(self, batch: int) -> torch.Tensor:
        """For `batch` images, the rows of the padded NHWC input to gather: each kept output pixel's
        taps in turn (R * taps)."""
        if batch not in self._gather_by_batch:
            top, bottom, left, right = self.pads
            hp, wp = self.input_hw[0] + top + bottom, self.input_hw[1] + left + right
            (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
            wo = self.output_hw[1]
            kept = self.kept_pixels
            base = (kept // wo * sh) * wp + kept % wo * sw
            taps = torch.tensor([i * dh * wp + j * dw for i in range(kh) for j in range(kw)])
            per_image = (base[:, None] + taps[None]).reshape(-1)
            images = torch.arange(batch)[:, None]
            self._gather_by_batch[batch] = (images * hp * wp + per_image[None]).reshape(-1)
        return self._gather_by_batch[batch]

    def _cols_weight(self, batch: int) -> torch.Tensor:
        """The im2col weight reordered for the kept rows of `batch` images (reordered for no
        particular size, oneDNN picks a kernel up to 15x slower)."""
        if batch not in self._weight_by_batch:
            rows = batch * self.kept_count
            self._weight_by_batch[batch] = _reorder(self.cols_weight, [0, 0], [1, 1], [1, 1], 1,
                                                    [1, self.cols_weight.shape[1], rows, 1])
        return self._weight_by_batch[batch]

    # -- the two paths -------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[-2:]) != self.input_hw:
            raise ValueError(f"this conv was compiled for {self.input_hw[0]}x{self.input_hw[1]} inputs, got "
                             f"{x.shape[-2]}x{x.shape[-1]}: compile the model for this input size")

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """x inside this conv's zero border, in a buffer kept between calls: its border stays zero,
        so only the interior is copied (F.pad on a channels_last tensor refills the whole output
        element by element: 15 ms for the 96x113x113 pad of Lite0's first stride-2 depthwise conv,
        against 0.3 ms for this copy)."""
        n, c, h, w = x.shape
        top, bottom, left, right = self.pads
        if self.pad_buffer is None or self.pad_buffer.shape[0] != n:
            self.pad_buffer = torch.zeros(n, h + top + bottom, w + left + right, c).permute(0, 3, 1, 2)
        self.pad_buffer[:, :, top:top + h, left:left + w].copy_(x)
        return self.pad_buffer

    def _residual(self, identity: torch.Tensor | None):
        if identity is None:
            return None
        return identity.contiguous(memory_format=CHANNELS_LAST), self.lo, self.hi

    def dense(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x)
        top, bottom, left, right = self.pads
        if not self.symmetric:
            x = self._padded(x)
        geometry = (self.dense_padding, list(self.stride), list(self.dilation), self.groups)
        residual = self._residual(identity)
        if residual is None:
            out = _pointwise(x, self.dense_weight, self.bias, *geometry, self.attr, self.scalars, "")
        else:
            out = _pointwise.binary(x, residual[0], self.dense_weight, self.bias, *geometry, "add", None,
                                    None if self.attr == "none" else self.attr, self.scalars, "")
        if self.masked and not self.feeds_kept_only:
            self._fill(out, residual)
        return out

    def read_masked_input(self, kept_pixels: torch.Tensor | None, fill: torch.Tensor | None) -> None:
        """This depthwise conv's producer writes its kept pixels `kept_pixels` alone (as compact rows,
        or in place in a full map whose other pixels it leaves unwritten): read the others as `fill`.
        None: the producer writes every pixel."""
        if not (self.native and self.depthwise):
            raise ValueError("only a depthwise conv with the compiled kernels reads a masked input")
        known = self._tables_input_mask
        if kept_pixels is not None and (known is None or not torch.equal(known, kept_pixels)):
            self._depthwise_rows_by_input.clear()  # tables of another producer mask
            self._ring_plans.clear()
            self._tables_input_mask = kept_pixels.clone()
        self.input_kept_pixels = kept_pixels.clone() if kept_pixels is not None else None
        self.input_fill = fill.clone() if fill is not None else None

    def fuse_producer(self, producer: CompiledConv2d | None) -> None:
        """Run `producer`, a sparse conv by the compiled kernel whose kept pixels this sparse depthwise
        conv reads (`read_masked_input`), band by band with this conv (`native.BandedCall`):
        the producer then passes its input through, and this conv reads that. None: undo."""
        if self.passes_input and producer is not self.fused_producer:
            raise ValueError("this depthwise conv is fused into the 1x1 conv after it: undo that first")
        if self.fused_producer is not None:
            self.fused_producer.passes_input = False
        if producer is not None and producer is not self._plans_producer:
            self._ring_plans.clear()  # plans made for another producer (kept while compile switches paths)
            self._plans_producer = producer
        if producer is not None and (producer.depthwise or not producer.native or producer.residual
                                     or self.input_kept_pixels is None):
            raise ValueError("a fused producer is a sparse conv by the compiled kernel with a masked depthwise consumer")
        self.fused_producer = producer
        if producer is not None:
            producer.passes_input = True

    def fuses(self, depthwise: CompiledConv2d) -> bool:
        """Whether this conv can run `depthwise` band by band (`fuse_depthwise`), and gains from it."""
        return (depthwise.fused_producer is not None and depthwise.feeds_kept_only and self.native and not self.depthwise
                and self.kernel_size == (1, 1) and not self.passes_input
                and self.taps_weight.numel() * 4 <= PROJECT_WEIGHT_BYTES)

    def fuse_depthwise(self, depthwise: CompiledConv2d | None) -> None:
        """Run `depthwise`, a sparse depthwise conv with a fused producer that hands its kept rows to
        this sparse 1x1 conv, together with that producer, band by band with this conv: each band's
        depthwise rows go straight into this conv, and the depthwise map is never written whole.
        The depthwise conv then passes its input through, and this conv reads that. None: undo."""
        if self.fused_depthwise is not None:
            self.fused_depthwise.passes_input = False
        if depthwise is not None and not self.fuses(depthwise):
            raise ValueError("a fused depthwise conv has a fused producer and hands its kept rows to this 1x1 conv, "
                             f"whose weight fits in {PROJECT_WEIGHT_BYTES} bytes")
        self.fused_depthwise = depthwise
        if depthwise is not None:
            depthwise.passes_input = True

    def sparse(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        if self.native and self.depthwise and self.fused_producer is not None:
            return self._fused_depthwise(x)
        if self.native and self.depthwise:
            return self._sparse_depthwise(x)
        if self.native:
            return self._sparse_native(x, identity)
        if x.dim() == 2:  # a producer's kept rows: this is a 1x1 conv with the same mask
            n = x.shape[0] // self.kept_count
            weight = self._cols_weight(n)
            rows, cols = x.shape[0], x
        else:
            n, cols = self._im2col(x)
            weight = self._cols_weight(n)
            rows = cols.shape[0]
        attr, scalars = ("none", []) if identity is not None else (self.attr, self.scalars)
        out = _pointwise(cols.view(1, rows, 1, -1).permute(0, 3, 1, 2), weight, self.bias,
                         [0, 0], [1, 1], [1, 1], 1, attr, scalars, "")
        kept = out.permute(0, 2, 3, 1).reshape(rows, self.out_channels)
        if self.feeds_kept_only:
            return kept
        return expand_rows(kept, self.slot.numpy(), self.fill.numpy(), (n, self.out_channels, *self.output_hw),
                           self._residual(identity))

    def zeros(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """The conv by the compiled kernel that skips x's zero channels (unmasked 1x1 convs only)."""
        self._check(x)
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: x is channels_last
        out = torch.empty(n, h, w, self.out_channels)
        self._skip_zeros(rows, out, _nhwc(identity) if identity is not None else None, self.path == "zeros-pixel")
        return out.permute(0, 3, 1, 2)

    def _skip_zeros(self, rows: torch.Tensor, out: torch.Tensor, residual: torch.Tensor | None, by_pixel: bool,
                    packed: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """The 1x1 conv skipping the zeros of input `rows` (pixels, cin), into `out` (and `residual`)
        laid out as those pixels' output rows; with the `packed` weight and bias, else the conv's own."""
        pixels = rows.shape[0]
        weight, bias = packed or (self.packed_weight, self.packed_bias)
        lists = self.workspace.get(native.lists_size(pixels, rows.shape[1]), torch.int32)
        native.sparse_conv1x1(rows, weight, bias, out.view(pixels, -1), lists, self.lo, self.hi,
                              residual.reshape(pixels, -1) if residual is not None else None, by_pixel)

    def _sparse_native(self, x: torch.Tensor, identity: torch.Tensor | None) -> torch.Tensor:
        """The kept pixels straight from the NHWC input by the compiled kernel (taps in the padding
        read zeros), written in place into the full output with the masked pixels' value between
        them in the same pass (or, handing over, compact rows)."""
        kept = self.kept_count
        if x.dim() == 2:  # a producer's kept rows: this is a 1x1 conv with the same mask
            n, source = x.shape[0] // kept, x.contiguous()
        else:
            self._check(x)
            n, source = x.shape[0], x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # a view: x is channels_last
        out = self._rows_output(n)
        residual = _nhwc(identity) if identity is not None else None
        if self.path == "kernel-zeros":  # every pixel kept: the rows in and out follow the pixels
            self._skip_zeros(source, out, residual, by_pixel=True)
            return self._finish_rows(out, identity)
        fill = self._fill_in_pass()
        native.rows_conv(source, self.taps_weight, self.taps_bias, out, self._kept_rows(n, x.dim() == 2), self.lo,
                         self.hi, residual, fill)
        return self._finish_rows(out, identity, filled=fill is not None)

    def _rows_output(self, n: int) -> torch.Tensor:
        """The output of the kept-pixel kernels for `n` images: kept rows, or a full NHWC map."""
        shape = (n * self.kept_count, self.out_channels) if self.feeds_kept_only else \
            (n, *self.output_hw, self.out_channels)
        return torch.empty(shape)

    def _fill_in_pass(self) -> torch.Tensor | None:
        """The masked pixels' value for a rows conv to write between its kept rows of a full map, or
        None: no masked pixels, none kept, or kept rows handed over (no full map)."""
        return self.fill if self.masked and not self.feeds_kept_only and self.kept_count else None

    def _finish_rows(self, out: torch.Tensor, identity: torch.Tensor | None = None, filled: bool = False) -> torch.Tensor:
        """Kept rows as they are for a consumer that reads them alone, else the full map, filled
        (unless the kernel `filled` it)."""
        if self.feeds_kept_only:
            return out
        out = out.permute(0, 3, 1, 2)
        if not filled and self.masked_count:
            self._fill(out, self._residual(identity))
        return out

    def _fill(self, out: torch.Tensor, residual) -> None:
        """The masked pixels of the output `out` set to their value (see `_residual`): by the
        compiled kernel on PyTorch's threads, or by numba on this one."""
        if native.available():
            native.fill_pixels(out, self.masked_pixels, self.fill, *(residual or ()))
        else:
            fill_pixels(out, self.masked_pixels.numpy(), self.fill.numpy(), residual)

    def _sparse_depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """The kept pixels of a depthwise conv by the compiled kernel, from a full NHWC map or from
        its producer's kept rows; then the masked pixels' value (or, handing over, compact rows)."""
        compact = x.dim() == 2
        if compact:
            n, source = x.shape[0] // self.input_kept_pixels.numel(), x.contiguous()
        else:
            self._check(x)
            n, source = x.shape[0], x.permute(0, 2, 3, 1)  # a contiguous view: x is channels_last
        out = self._rows_output(n)
        fill = self.input_fill if self.input_fill is not None else self.bias  # else no tap reads it
        native.depthwise_rows(source, self.taps_weight, self.bias, out, self._depthwise_rows(compact), fill,
                              self.lo, self.hi)
        return self._finish_rows(out)

    def _fused_depthwise(self, x: torch.Tensor, project: CompiledConv2d | None = None,
                         identity: torch.Tensor | None = None) -> torch.Tensor:
        """This depthwise conv and its fused producer band by band over each image: x is the
        producer's input (a full map, or its own producer's kept rows). With `project`, the 1x1 conv
        that fused this one (`fuse_depthwise`) runs on each band too, and its output is returned."""
        producer, rows_input = self.fused_producer, x.dim() == 2
        if rows_input:  # a 1x1 producer with the mask of its own producer
            n, source = x.shape[0] // producer.kept_count, x.contiguous()
        else:
            producer._check(x)
            n, source = x.shape[0], x.permute(0, 2, 3, 1)  # a contiguous view: x is channels_last
        call = self._banded_call(n, rows_input, project)
        if project is None:
            out = self._rows_output(n)
            call.run(source, out)
            return self._finish_rows(out)
        out = project._rows_output(n)
        call.run(source, out, _nhwc(identity) if identity is not None else None)
        return project._finish_rows(out, identity, filled=call.fills)

    def _banded_call(self, n: int, rows_input: bool, project: CompiledConv2d | None) -> native.BandedCall:
        """The kernel call of `_fused_depthwise` for `n` images, made once per batch size, thread
        count, instruction set and hand-over (kept with the ring plans)."""
        producer, threads = self.fused_producer, torch.get_num_threads()
        key = ("call", n, rows_input, self.feeds_kept_only, project is not None and project.feeds_kept_only,
               producer.path, project.path if project is not None else None, threads, native.isa())
        call = self._ring_plans.get(key)
        if call is not None:
            return call
        empty = torch.empty(0)
        band = self._band_pixels(native.image_parts(n, threads), project is not None)
        table, bands, producer_rows = self._ring_plan(rows_input, project is not None, band)
        in_image = producer.in_channels * (producer.kept_count if rows_input else
                                           producer.input_hw[0] * producer.input_hw[1])
        first = producer._kernel_job(producer_rows)
        out = self._rows_output(n) if project is None else empty.view(0, self.out_channels)
        second, geometry = native.depthwise_job(empty, self.taps_weight, self.bias, out, table, producer.fill,
                                                self.lo, self.hi, n)
        if project is None:
            call = native.BandedCall(first, second, (geometry,), bands, n, in_image, table.out_image)
        else:
            _, out_image = project._out_rows()
            third = project._kernel_job(project._band_rows(band), out_image)
            call = native.BandedCall(first, second, (geometry,), bands, n, in_image, out_image, third, band)
        self._ring_plans[key] = call
        return call

    def _band_pixels(self, parts: int, projected: bool) -> int:
        """Kept pixels per band when `parts` threads share each image: DEPTHWISE_BAND with a fused
        project conv, else BAND_FLOATS of this conv's rows (DEPTHWISE_BAND at least); with several
        parts, bands as even as a whole number of them per part allows (at batch 1 a 7x7 map's one
        band would leave the second thread idle)."""
        band = DEPTHWISE_BAND if projected else max(DEPTHWISE_BAND, BAND_FLOATS // self.in_channels)
        if parts == 1:
            return band
        bands = -(-self.kept_count // band)
        return -(-self.kept_count // (-(-bands // parts) * parts))

    def _tap_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept pixels, taps): each tap's pixel in the input map (clamped into it), and whether it
        lies inside the map rather than in the padding."""
        (h, w), kept = self.input_hw, self.kept_pixels
        top, _, left, _ = self.pads
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        y = (kept // self.output_hw[1] * sh - top)[:, None] + (torch.arange(kh) * dh).repeat_interleave(kw)
        x = (kept % self.output_hw[1] * sw - left)[:, None] + (torch.arange(kw) * dw).repeat(kh)
        return y.clamp(0, h - 1) * w + x.clamp(0, w - 1), (y >= 0) & (y < h) & (x >= 0) & (x < w)

    def _producer_slots(self) -> torch.Tensor:
        """(kept pixels, taps): the producer's kept row each tap reads, -2 for a pixel the producer
        masked, -1 in the padding."""
        pixel, inside = self._tap_pixels()
        slot = torch.full((self.input_hw[0] * self.input_hw[1],), -2, dtype=torch.long)
        slot[self.input_kept_pixels] = torch.arange(self.input_kept_pixels.numel())
        return torch.where(inside, slot[pixel], -1)

    def _out_rows(self) -> tuple[torch.Tensor, int]:
        """Each kept pixel's output row offset in an image, and the floats of an output image."""
        kept, c = self.kept_pixels, self.out_channels
        if self.feeds_kept_only:
            return torch.arange(kept.numel()) * c, kept.numel() * c
        return kept * c, self.output_hw[0] * self.output_hw[1] * c

    def _depthwise_rows(self, compact: bool) -> native.DepthwiseRows:
        """Where each kept pixel's taps lie in an input image (see `native.DepthwiseRows`): in the
        full map, or with `compact` among the producer's kept rows."""
        key = compact, self.feeds_kept_only, self.input_kept_pixels is not None
        if key not in self._depthwise_rows_by_input:
            c, in_image = self.in_channels, self.input_hw[0] * self.input_hw[1]
            pixel, inside = self._tap_pixels()
            rows = torch.where(inside, pixel * c, -1)
            if self.input_kept_pixels is not None:  # the producer's masked pixels read its fill
                slots = self._producer_slots()
                rows = torch.where(slots >= 0, slots * c if compact else rows, slots)
                in_image = self.input_kept_pixels.numel() if compact else in_image
            out_rows, out_image = self._out_rows()
            self._depthwise_rows_by_input[key] = native.depthwise_table(rows, out_rows, in_image * c, out_image)
        return self._depthwise_rows_by_input[key]

    def _ring_plan(self, rows_input: bool, projected: bool = False, band: int = DEPTHWISE_BAND) -> tuple[
            native.DepthwiseRows, native.Bands, native.KeptRows]:
        """For the fused producer: this conv's table into the ring (and, `projected`, out to the band
        buffer of a fused 1x1 consumer), the bands of `band` kept pixels, the producer's rows."""
        key = rows_input, self.feeds_kept_only, projected, band
        if key not in self._ring_plans:
            slots = self._producer_slots()
            valid = slots >= 0
            needs_to = torch.where(valid, slots, -1).max(1).values.cummax(0).values + 1
            needs_from = torch.where(valid, slots, slots.new_tensor(2**62)).min(1).values
            starts = range(0, slots.shape[0], band)
            stops = torch.tensor([min(start + band, slots.shape[0]) for start in starts], dtype=torch.long)
            made = needs_to[stops - 1]
            first = torch.tensor([int(needs_from[start:stop].min()) for start, stop in zip(starts, stops)],
                                 dtype=torch.long)
            first = torch.minimum(first.flip(0).cummin(0).values.flip(0), made)  # what this band or a later one reads
            ring = max([1] + (made - first).tolist())
            ends = torch.stack([made, stops, first], 1).reshape(-1)
            out_rows, out_image = self._out_rows()
            if projected:  # band b's rows fill the band buffer from its start
                out_rows, out_image = torch.arange(slots.shape[0]) % band * self.out_channels, 0
            table = native.depthwise_table(torch.where(valid, slots % ring * self.in_channels, slots), out_rows, 0,
                                           out_image)
            producer = self.fused_producer
            kept = producer.kept_count
            rows = producer._kept_rows(1, rows_input)._replace(out_rows=torch.arange(kept) % ring * producer.out_channels)
            self._ring_plans[key] = table, native.Bands(ends.contiguous(), ring), rows
        return self._ring_plans[key]

    def _kept_rows(self, batch: int, rows_input: bool) -> native.KeptRows:
        """For `batch` images: where the kernel reads each kept pixel's taps in the unpadded input (or
        its row, for kept-row input), which of its taps lie inside the input, and where its output
        row goes."""
        key = (batch, rows_input, self.feeds_kept_only)
        if key not in self._kept_rows_by_batch:
            kept, c, images = self.kept_pixels, self.in_channels, torch.arange(batch)[:, None]
            n_kept, (ho, wo) = kept.numel(), self.output_hw
            rows = torch.arange(n_kept)[None] if self.feeds_kept_only else kept[None]
            out_rows = ((images * (n_kept if self.feeds_kept_only else ho * wo) + rows) * self.out_channels).reshape(-1)
            if rows_input:
                in_rows = torch.arange(batch * n_kept) * c
                self._kept_rows_by_batch[key] = native.KeptRows(in_rows, torch.zeros(1, dtype=torch.long),
                                                                out_rows.contiguous())
            else:
                in_rows, taps, inside = self._taps_in_input(kept)
                in_rows = ((images * self.input_hw[0] * self.input_hw[1]) * c + in_rows[None]).reshape(-1)
                self._kept_rows_by_batch[key] = native.KeptRows(in_rows.contiguous(), taps, out_rows.contiguous(),
                                                                inside.repeat(batch), self.kernel_size[1])
        return self._kept_rows_by_batch[key]

    def _kernel_job(self, rows: native.KeptRows, image_floats: int = 0) -> native.Job:
        """The Job of this conv on one image inside a fused block (`native.BandedCall`), over `rows`:
        into the ring of the depthwise conv it feeds (`fuse_producer`), or from the band buffer of
        the one it runs (`fuse_depthwise`). Its rows conv, or on "kernel-zeros" its 1x1 conv
        skipping zeros pixel by pixel, whose rows follow the pixels (the kernel places them as
        `rows` do). With `image_floats` (an output image's), a masked rows conv writing a full map
        writes its masked pixels' value in the same pass (`_fill_in_pass`)."""
        empty = torch.empty(0)
        if self.path == "kernel-zeros" and native.isa() == "avx512":  # (an ISA lowered since: the rows conv)
            return native.sparse_conv1x1_job(empty.view(0, self.in_channels), self.packed_weight, self.packed_bias,
                                             empty.view(0, self.out_channels), self.lo, self.hi, by_pixel=True,
                                             rows=self.kept_count)
        fill = self._fill_in_pass() if image_floats else None
        return native.rows_conv_job(empty, self.taps_weight, self.taps_bias, empty.view(0, self.out_channels), rows,
                                    self.lo, self.hi, fill=fill, out_floats=image_floats)

    def _band_rows(self, band: int) -> native.KeptRows:
        """One image's rows of this 1x1 conv when its input rows come from the band buffer of a fused
        depthwise conv, `band` rows long (`fuse_depthwise`)."""
        key = ("band", self.feeds_kept_only, band)
        if key not in self._kept_rows_by_batch:
            rows = self._kept_rows(1, True)
            in_rows = torch.arange(rows.in_rows.numel()) % band * self.in_channels
            self._kept_rows_by_batch[key] = rows._replace(in_rows=in_rows)
        return self._kept_rows_by_batch[key]

    def _taps_in_input(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the kept pixels of one image: the offset of each one's top-left tap in the unpadded
        NHWC image (negative or past a row's end in the padding), each tap's offset from there, and
        the packed range of kernel rows and columns that fall inside the image."""
        top, _, left, _ = self.pads
        (h, w), c = self.input_hw, self.in_channels
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        y0, x0 = kept // self.output_hw[1] * sh - top, kept % self.output_hw[1] * sw - left

        def inside(start, size, dilation, length):  # [first, end) kernel index whose input is in [0, length)
            first = ((-start).clamp(min=0) + dilation - 1) // dilation
            end = ((length - start).clamp(min=0) + dilation - 1) // dilation
            return first.clamp(max=size), end.clamp(max=size)

        (i0, i1), (j0, j1) = inside(y0, kh, dh, h), inside(x0, kw, dw, w)
        packed = i0 | i1 << 16 | j0 << 32 | j1 << 48
        taps = torch.tensor([(i * dh * w + j * dw) * c for i in range(kh) for j in range(kw)])
        return (y0 * w + x0) * c, taps, packed

    def _padded_numel(self, x: torch.Tensor) -> int:
        n, c, h, w = x.shape
        top, bottom, left, right = self.pads
        return n * (h + top + bottom) * (w + left + right) * c if (top or bottom or left or right) else 0

    def _padded_rows(self, x: torch.Tensor, space: torch.Tensor) -> torch.Tensor:
        """x as NHWC pixel rows (n * hp * wp, c), inside its zero border in `space` if it has one."""
        n, c, h, w = x.shape
        top, bottom, left, right = self.pads
        nhwc = x.permute(0, 2, 3, 1)
        if space.numel():
            padded = space.view(n, h + top + bottom, w + left + right, c)
            # the workspace is shared, so its borders hold another layer's data: zero them
            padded[:, :top].zero_()
            padded[:, top + h:].zero_()
            padded[:, top:top + h, :left].zero_()
            padded[:, top:top + h, left + w:].zero_()
            padded[:, top:top + h, left:left + w] = nhwc
            nhwc = padded
        return nhwc.reshape(-1, c)  # a view: x is channels_last, or was just padded

    def _im2col(self, x: torch.Tensor) -> tuple[int, torch.Tensor]:
        """The batch size and the im2col rows of the kept output pixels (rows, taps * c), in the
        shared workspace."""
        self._check(x)
        n, c = x.shape[:2]
        gather = self._gather_index(n)
        taps = self.kernel_size[0] * self.kernel_size[1]
        rows = gather.numel() // taps
        padded_numel = self._padded_numel(x)
        space = self.workspace.get(padded_numel + rows * taps * c)
        source = self._padded_rows(x, space[:padded_numel])
        cols = space[padded_numel:].view(rows, taps * c)
        torch.index_select(source, 0, gather, out=cols.view(-1, c))
        return n, cols

    def zeros_taps(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """The conv by the pixel-by-pixel 1x1 kernel over x's im2col rows, skipping their zeros."""
        n, cols = self._im2col(x)
        out = torch.empty(n, *self.output_hw, self.out_channels)
        self._skip_zeros(cols, out, _nhwc(identity) if identity is not None else None, by_pixel=True,
                         packed=(self.cols_packed_weight, self.cols_packed_bias))
        return out.permute(0, 3, 1, 2)

    def zeros_3x3(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """The conv by the direct 3x3 kernel that skips x's zeros."""
        self._check(x)
        n, _, h, w = x.shape
        out = torch.empty(n, *self.output_hw, self.out_channels)
        masks = self.workspace.get(2 * n * h * w, torch.int32).view(torch.int64)  # one 64-bit mask per pixel
        native.sparse_conv3x3(x.permute(0, 2, 3, 1), self.direct_weight, self.bias, out, masks, self.lo, self.hi,
                              _nhwc(identity) if identity is not None else None, self.stride[0])
        return out.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        if (identity is not None) != self.residual:
            raise ValueError("a residual conv takes the tensor to add, and only a residual conv does")
        if self.passes_input:  # a conv after it runs it
            return x
        if self.fused_depthwise is not None:
            return self.fused_depthwise._fused_depthwise(x, self, identity)
        if x.dim() == 2:
            return self.sparse(x, identity)
        if not x.is_contiguous(memory_format=CHANNELS_LAST):
            x = x.contiguous(memory_format=CHANNELS_LAST)
        if self.path in ZEROS_PATHS:
            return self.zeros(x, identity)
        if self.path == TAPS_ZEROS_PATH:
            return self.zeros_taps(x, identity)
        if self.path == DIRECT_ZEROS_PATH:
            return self.zeros_3x3(x, identity)
        return self.sparse(x, identity) if self.path in KEPT_PATHS else self.dense(x, identity)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", groups={self.groups}" if self.groups > 1 else ""
        s += ", + residual" if self.residual else ""
        s += f", activation={self.attr}" if self.bounds else ""
        return s + (f", sparsity={self.sparsity:.2f}" if self.masked else "") + f", path={self.path}"
