"""The compiled kernels (kernels.c), reached through ctypes, and the instruction set they run with.

The install builds `actzip.runtime.kernels` with the system C compiler. Where it could not (no
compiler), `available()` is False, `warn_if_missing()` says so once, and callers run PyTorch instead.

The kernels split their rows between PyTorch's intra-op thread count (`torch.get_num_threads()`,
read at each call) on PyTorch's own OpenMP threads: the team is started through the libgomp that
torch loaded (GOMP_parallel, with the team size as an argument), so no second pool competes for the
cores and the thread count a user set stays as it is. Where torch brings no libgomp, the kernels run
on the calling thread. Work under WORK_PER_THREAD multiply-adds stays on the calling thread. A
rows conv with fewer rows than output channels (a late layer at batch 1) shares its output
channels instead, so that each thread streams its part of the weight alone: ResNet18 at batch 1 on
2 threads ran 10 % faster so (Intel Xeon, s = 0.3 and 0.5).

The instruction set is this CPU's best (AVX-512F, else AVX2 + FMA, else portable C), lowered by
the environment as `actzip.compiled` says.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from typing import NamedTuple

import torch

from ..compiled import ISAS, chosen, extension
from ..errors import ActzipWarning

WORK_PER_THREAD = 1 << 21  # multiply-adds below which a second thread costs more than it saves
FILL_WORK = 16  # multiply-adds a float written by fill_pixels counts as, for WORK_PER_THREAD
TILE = 4  # pixels per register tile (kernels.c): thread shares start on a tile
LIST_SLOTS, LIST_SLACK = TILE + 1, 17  # per tile: the union's list and each pixel's, each cin + 17 ints
PANEL = 64  # output channels per panel of a `rows_conv` weight (kernels.c)
_F = ctypes.c_void_p
_I64 = ctypes.c_int64


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded extension, or None where the install could not build it."""
    lib = extension(__package__)
    if lib is None:
        return None
    lib.actzip_sparse_conv1x1.argtypes = [_F, _F, _F, _F, _F, _F, _I64, _I64, _I64, _I64, _I64, ctypes.c_float,
                                          ctypes.c_float, ctypes.c_int]
    lib.actzip_sparse_conv1x1.restype = ctypes.c_int
    lib.actzip_best_isa.restype = ctypes.c_int
    lib.actzip_rows_tile_pixels.argtypes = [_I64]
    lib.actzip_rows_tile_pixels.restype = ctypes.c_int
    lib.actzip_share.argtypes = [_F]
    return lib


def available() -> bool:
    return library() is not None


def warn_if_missing() -> None:
    if not available():
        warnings.warn("actzip's compiled kernels are not built (no C compiler at install?): the runtime "
                      "falls back to PyTorch, and sparse-input convs run dense", ActzipWarning, stacklevel=3)


@functools.cache
def best_isa() -> str:
    """The best instruction set this CPU offers the kernels, whatever the environment asks."""
    return ISAS[library().actzip_best_isa()] if available() else "none"


def isa() -> str:
    """The instruction set the kernels run with here (see the module doc)."""
    return chosen(best_isa()) if available() else "none"


class Job(ctypes.Structure):
    """One kernel call as kernels.c's Job: its arguments and how to share its rows."""

    _fields_ = [("thread_num", _F), ("kernel", ctypes.c_int), ("threads", ctypes.c_int), ("isa", ctypes.c_int),
                ("status", ctypes.c_int)] + [(n, _I64) for n in ("rows", "list_ints", "ntaps", "kw", "cin", "cout", "ldw")] \
        + [(n, _F) for n in ("x", "w", "bias", "residual", "zeros", "y", "lists", "in_rows", "taps", "out_rows",
                             "inside", "geometry")] \
        + [("lo", ctypes.c_float), ("hi", ctypes.c_float), ("fill", _F), ("producer", _F), ("consumer", _F),
           ("bands", _F), ("ring", _F)] + [(n, _I64) for n in ("nbands", "nparts", "ring_floats", "in_image", "tile")] \
        + [("project", _F), ("band", _F), ("band_floats", _I64), ("out_image", _I64), ("masked", _I64),
           ("by_outputs", _I64), ("out_floats", _I64)]


@functools.cache
def _openmp() -> tuple[ctypes.CDLL, int] | None:
    """(torch's libgomp, the address of its omp_get_thread_num), or None where torch has none."""
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    path = os.path.join(lib_dir, "libgomp.so.1")
    if not os.path.isfile(path):
        return None
    gomp = ctypes.CDLL(path)  # already loaded by torch: the same library, the same thread pool
    gomp.GOMP_parallel.argtypes = [_F, _F, ctypes.c_uint, ctypes.c_uint]
    return gomp, ctypes.cast(gomp.omp_get_thread_num, _F).value


@functools.cache
def _thread_zero() -> int:
    """The address of kernels.c's actzip_thread_zero (looked up once: a cast costs a microsecond
    per kernel call, and a batch-1 forward makes dozens)."""
    return ctypes.cast(library().actzip_thread_zero, _F).value


def run_job(job: Job, work: int) -> None:
    """job's rows in tile-aligned shares, one per thread (see the module doc), or a rows conv's
    output channels in shares of whole vectors."""
    lib, openmp = library(), _openmp()
    # a rows conv with more output channels than rows has a weight larger than its im2col rows:
    # sharing the rows, each thread would stream the whole weight
    job.by_outputs = job.kernel == 1 and job.cout > job.rows
    unit = 1 if job.kernel == 4 else TILE  # BandedCall shares whole images
    shares = -(-job.cout // 16) if job.by_outputs else -(-job.rows // unit)
    threads = max(1, min(torch.get_num_threads(), work // WORK_PER_THREAD, shares))
    if openmp is None or threads == 1:
        job.threads, job.thread_num = 1, _thread_zero()
        lib.actzip_share(ctypes.byref(job))
    else:
        job.threads, job.thread_num = threads, openmp[1]
        openmp[0].GOMP_parallel(ctypes.cast(lib.actzip_share, _F), ctypes.byref(job), threads, 0)
    if job.status:
        raise ValueError("the compiled kernel refused its arguments (weight not padded to 16?)")


def packed_weight(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 conv's (cout, cin, 1, 1) weight as the (cin, ldw) rows the kernel reads, and its bias,
    both zero-padded to ldw = cout rounded up to 16 (the kernel loads whole vectors), plus 16 where
    that is a multiple of 256: rows 1 KB apart fall in a few sets of the L1 cache and evict each
    other, which halved the pixel-by-pixel kernel's speed on weights 512 or 1024 wide."""
    cout, cin = weight.shape[:2]
    ldw = -(-cout // 16) * 16
    ldw += 16 if ldw % 256 == 0 else 0
    w = torch.zeros(cin, ldw)
    w[:, :cout] = weight.detach().reshape(cout, cin).t()
    b = torch.zeros(ldw)
    b[:cout] = bias.detach()
    return w, b


def sparse_conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                   lists: torch.Tensor, lo: float = -float("inf"), hi: float = float("inf"),
                   residual: torch.Tensor | None = None, by_pixel: bool = False) -> torch.Tensor:
    """out (P, cout) = clamp(x (P, cin) @ weight + bias (+ residual), lo, hi), skipping x's zeros.

    `weight` and `bias` come from `packed_weight`; `lists` is an int32 workspace of at least
    `lists_size(P, cin)` elements. Every tensor is float32, contiguous, on the CPU. `by_pixel`: each
    pixel over its own non-zero channels (AVX-512 only; elsewhere, and by default, tiles of TILE
    pixels over the union of theirs): faster where neighbouring pixels share few zero channels."""
    if lists.numel() < lists_size(x.shape[0], x.shape[1]):
        raise ValueError("sparse_conv1x1: shapes do not match")
    job = sparse_conv1x1_job(x, weight, bias, out, lo, hi, residual, by_pixel)
    job.lists = lists.data_ptr()
    run_job(job, job.rows * job.cin * job.cout)
    return out


def sparse_conv1x1_job(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, lo: float,
                       hi: float, residual: torch.Tensor | None = None, by_pixel: bool = False,
                       rows: int | None = None) -> Job:
    """The Job of `sparse_conv1x1` (without its lists), its tensors checked; the tensors must outlive
    it. `rows`: the pixels it will run, where x and out are pointed at later (`BandedCall`)."""
    p, cin = x.shape
    cout = out.shape[1]
    for t in (x, weight, bias, out) + ((residual,) if residual is not None else ()):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError("sparse_conv1x1 takes contiguous float32 tensors")
    if weight.shape[0] != cin or out.shape[0] != p or bias.numel() != weight.shape[1]:
        raise ValueError("sparse_conv1x1: shapes do not match")
    if residual is not None and residual.shape != out.shape:
        raise ValueError("sparse_conv1x1: the residual must have the output's shape")
    return Job(kernel=5 if by_pixel else 0, isa=ISAS.index(isa()), rows=p if rows is None else rows,
               list_ints=lists_size(TILE, cin), cin=cin, cout=cout, ldw=weight.shape[1], x=x.data_ptr(),
               w=weight.data_ptr(), bias=bias.data_ptr(), y=out.data_ptr(),
               residual=residual.data_ptr() if residual is not None else None, lo=lo, hi=hi)


def packed_taps_weight(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (cout, cin, kh, kw) weight as the rows `rows_conv` reads: panels of PANEL output channels,
    each its (kh * kw * cin, PANEL) rows in (tap, channel) order, one after the other, so the kernel
    streams a panel in order; and the bias. Both zero-padded to whole panels."""
    cout = weight.shape[0]
    panels = -(-cout // PANEL)
    rows = weight.detach().permute(2, 3, 1, 0).reshape(-1, cout)  # (taps * cin, cout)
    w = torch.zeros(rows.shape[0], panels * PANEL)
    w[:, :cout] = rows
    b = torch.zeros(panels * PANEL)
    b[:cout] = bias.detach()
    return w.view(rows.shape[0], panels, PANEL).transpose(0, 1).reshape(-1, PANEL).contiguous(), b


class KeptRows(NamedTuple):
    """Where `rows_conv` reads and writes, as int64 offsets in floats (see kernels.c): each kept
    pixel's top-left tap in the NHWC input (in_rows), each tap's offset from there (taps), each output
    row (out_rows); and, for pixels whose taps reach into the padding, the kernel rows and columns
    inside the input (inside, uint64 as int64; None: every tap of every pixel is inside)."""

    in_rows: torch.Tensor
    taps: torch.Tensor
    out_rows: torch.Tensor
    inside: torch.Tensor | None = None
    kw: int = 1


@functools.cache
def _zero_row(cin: int) -> torch.Tensor:
    return torch.zeros(cin)


def rows_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, kept: KeptRows,
              lo: float = -float("inf"), hi: float = float("inf"), residual: torch.Tensor | None = None,
              fill: torch.Tensor | None = None) -> torch.Tensor:
    """The conv at the kept output pixels only, into `out`: x is the NHWC input (or kept rows),
    `weight` and `bias` from `packed_taps_weight`, residual laid out as out. With `fill` (cout,), out
    is the full NHWC map and every other row of it gets the masked pixels' value in the same pass,
    as `fill_pixels` writes it (at least one pixel kept). The offsets are the caller's to get right:
    they are not checked here, beyond their tensors."""
    job = rows_conv_job(x, weight, bias, out, kept, lo, hi, residual, fill)
    run_job(job, job.rows * weight.shape[0] * out.shape[-1])
    return out


@functools.cache
def rows_tile_pixels(cin: int) -> int:
    """Pixels per register tile of `rows_conv` for `cin` input channels on this CPU, as measured
    (the rule is kernels.c's `actzip_rows_tile_pixels`). Cached: every rows-conv call asks."""
    return library().actzip_rows_tile_pixels(cin)


def rows_conv_job(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, kept: KeptRows,
                  lo: float, hi: float, residual: torch.Tensor | None = None, fill: torch.Tensor | None = None,
                  out_floats: int = 0) -> Job:
    """The Job of `rows_conv`, its tensors checked; the tensors must outlive it. `out_floats`: those
    the masked rows fill up to (`out`'s, by default; an image's, for a Job a BandedCall moves)."""
    rows, cout, ntaps = kept.in_rows.numel(), out.shape[-1], kept.taps.numel()
    cin = weight.shape[0] // (ntaps * -(-cout // PANEL))
    for t in (x, weight, bias, out) + tuple(t for t in (residual, fill) if t is not None):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError("rows_conv takes contiguous float32 tensors")
    if fill is not None and (fill.shape != (cout,) or rows == 0):
        raise ValueError("rows_conv fills the masked rows with a (cout,) row, around at least one kept row")
    offsets = [kept.in_rows, kept.taps, kept.out_rows] + ([kept.inside] if kept.inside is not None else [])
    if any(t.dtype != torch.int64 or not t.is_contiguous() for t in offsets):
        raise ValueError("rows_conv takes contiguous int64 offsets")
    if rows != kept.out_rows.numel() or weight.shape != (ntaps * cin * -(-cout // PANEL), PANEL) or \
            (kept.inside is not None and kept.inside.numel() != rows) or ntaps % kept.kw:
        raise ValueError("rows_conv: shapes do not match")
    return Job(kernel=1, isa=ISAS.index(isa()), rows=rows, ntaps=ntaps, kw=kept.kw, cin=cin, cout=cout,
               ldw=weight.shape[1], x=x.data_ptr(), w=weight.data_ptr(), bias=bias.data_ptr(), y=out.data_ptr(),
               residual=residual.data_ptr() if residual is not None else None, zeros=_zero_row(cin).data_ptr(),
               in_rows=kept.in_rows.data_ptr(), taps=kept.taps.data_ptr(), out_rows=kept.out_rows.data_ptr(),
               inside=kept.inside.data_ptr() if kept.inside is not None else None, lo=lo, hi=hi,
               tile=rows_tile_pixels(cin), fill=fill.data_ptr() if fill is not None else None,
               out_floats=out_floats or out.numel())


def max_pool(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """Max pooling of a channels_last float32 batch (no dilation, no ceil mode; NaN propagates), into
    a new channels_last tensor."""
    n, c, h, w = x.shape
    if x.dtype != torch.float32 or not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("max_pool takes a channels_last float32 batch")
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError("max_pool: the window does not fit the input, or pads more than half of it")
    out = torch.empty(n, ho, wo, c)
    geometry = torch.tensor([n, h, w, c, ho, wo, kh, kw, sh, sw, ph, pw], dtype=torch.int64)
    job = Job(kernel=2, isa=ISAS.index(isa()), rows=n * ho, x=x.data_ptr(), y=out.data_ptr(),
              geometry=geometry.data_ptr())
    run_job(job, out.numel() * kh * kw)
    return out.permute(0, 3, 1, 2)


def fill_pixels(out: torch.Tensor, pixels: torch.Tensor, value: torch.Tensor, identity: torch.Tensor | None = None,
                lo: float = -float("inf"), hi: float = float("inf")) -> None:
    """Set the pixels `pixels` (int64 indices into H*W) of every image of the channels_last float32
    `out` (N, C, H, W) to `value` (C,), or with `identity` (laid out as out) to clamp(value +
    identity, lo, hi), in place; on PyTorch's threads, where they are worth it. The pixels are the
    caller's to get right (a module's own buffer): checking them cost a reduction per call."""
    n, c, h, w = out.shape
    tensors = (out, identity) if identity is not None else (out,)
    if any(t.dtype != torch.float32 or not t.is_contiguous(memory_format=torch.channels_last) or t.shape != out.shape
           for t in tensors) or value.dtype != torch.float32 or value.shape != (c,) or not value.is_contiguous() \
            or pixels.dtype != torch.int64 or not pixels.is_contiguous():
        raise ValueError("fill_pixels takes a channels_last float32 map, its (C,) value and int64 pixels")
    job = Job(kernel=6, isa=ISAS.index(isa()), rows=n * pixels.numel(), cout=c, y=out.data_ptr(),
              fill=value.data_ptr(), residual=identity.data_ptr() if identity is not None else None,
              out_rows=pixels.data_ptr(), out_image=h * w * c, masked=pixels.numel(), lo=lo, hi=hi)
    if job.rows:
        run_job(job, job.rows * c * FILL_WORK)


CONV3X3_OUTPUTS = (16, 32, 64)  # output channels `sparse_conv3x3` runs (kernels.c: sums in registers)
CONV3X3_MAX_INPUTS = 64  # input channels it runs: one 64-bit mask of non-zeros per pixel


def sparse_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                   masks: torch.Tensor, lo: float = -float("inf"), hi: float = float("inf"),
                   residual: torch.Tensor | None = None, stride: int = 1) -> torch.Tensor:
    """out = clamp(conv3x3(x, stride 1 or 2, padding 1) + bias (+ residual), lo, hi), skipping x's
    zeros (AVX-512 only). x (N, H, W, cin) and out, residual (N, Ho, Wo, cout) are contiguous NHWC float32;
    `weight` is (3, 3, cin, cout) contiguous; `masks` an int64 workspace of N * H * W elements.
    cin <= CONV3X3_MAX_INPUTS, cout in CONV3X3_OUTPUTS."""
    n, h, w, cin = x.shape
    cout = out.shape[-1]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    tensors = (x, weight, bias, out) + ((residual,) if residual is not None else ())
    if any(t.dtype != torch.float32 or not t.is_contiguous() for t in tensors) or masks.dtype != torch.int64 \
            or masks.numel() < n * h * w or weight.shape != (3, 3, cin, cout) or out.shape != (n, ho, wo, cout) \
            or bias.shape != (cout,) or (residual is not None and residual.shape != out.shape) \
            or cin > CONV3X3_MAX_INPUTS or cout not in CONV3X3_OUTPUTS or stride not in (1, 2):
        raise ValueError("sparse_conv3x3: shapes, layouts or dtypes do not match")
    common = dict(isa=ISAS.index(isa()), cin=cin, cout=cout, x=x.data_ptr(), lists=masks.data_ptr())
    run_job(Job(kernel=7, rows=n * h * w, **common), n * h * w * cin * 16)
    run_job(Job(kernel=8, rows=n * ho, kw=w, in_image=h, out_image=ho, tile=wo, ldw=stride, w=weight.data_ptr(),
                bias=bias.data_ptr(),
                y=out.data_ptr(), residual=residual.data_ptr() if residual is not None else None, lo=lo, hi=hi,
                **common), n * ho * wo * cin * cout * 9)
    return out


class DepthwiseRows(NamedTuple):
    """Where `depthwise_rows` reads and writes, per image, as int64 offsets in floats (see kernels.c):
    for each kept pixel and tap, its input row (-1: the padding, -2: a pixel the producer masked), and
    each kept pixel's output row; the floats of one input and one output image; and per kept pixel
    the floats by which the next one's taps follow its own (`tap_steps`). Made by `depthwise_table`."""

    in_rows: torch.Tensor
    out_rows: torch.Tensor
    in_image: int
    out_image: int
    steps: torch.Tensor


def depthwise_table(in_rows: torch.Tensor, out_rows: torch.Tensor, in_image: int, out_image: int) -> DepthwiseRows:
    """A DepthwiseRows of (kept pixels, taps) `in_rows`, its steps worked out once here."""
    return DepthwiseRows(in_rows.reshape(-1).contiguous(), out_rows.contiguous(), in_image, out_image,
                         tap_steps(in_rows))


def tap_steps(in_rows: torch.Tensor) -> torch.Tensor:
    """Per kept pixel of (kept pixels, taps) `in_rows`, the floats s > 0 by which every tap of the
    next pixel follows its own, all inside the input (the next pixel along an image row, away from
    the border), else 0: the kernel runs such pixels as one run of taps."""
    inside = (in_rows >= 0).all(1)
    step = in_rows[1:, 0] - in_rows[:-1, 0]
    follows = ((in_rows[1:] - in_rows[:-1]) == step[:, None]).all(1) & inside[1:] & inside[:-1] & (step > 0)
    return torch.cat([torch.where(follows, step, 0), torch.zeros(1, dtype=torch.int64)])


def depthwise_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                   kept: DepthwiseRows, fill: torch.Tensor, lo: float = -float("inf"),
                   hi: float = float("inf")) -> torch.Tensor:
    """A depthwise conv at the kept output pixels only, into `out`: x the input images (full NHWC
    maps or a producer's kept rows), `weight` (taps, C), `fill` the row a masked input pixel reads.
    The offsets are the caller's to get right: they are not checked here, beyond their tensors."""
    images = x.numel() // kept.in_image if kept.in_image > 0 else -1
    if x.numel() != images * kept.in_image:
        raise ValueError("depthwise_rows: shapes do not match")
    job, geometry = depthwise_job(x, weight, bias, out, kept, fill, lo, hi, images)
    run_job(job, job.rows * weight.numel())
    return out


def depthwise_job(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                  kept: DepthwiseRows, fill: torch.Tensor, lo: float, hi: float, images: int) -> tuple[Job, torch.Tensor]:
    """The Job of `depthwise_rows` over `images` images, its tensors checked, and the geometry tensor
    it points to; the tensors must outlive it. `kept.in_image` 0: every image reads the same x."""
    taps, channels = weight.shape
    pixels = kept.out_rows.numel()
    for t in (x, weight, bias, out, fill):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError("depthwise_rows takes contiguous float32 tensors")
    if any(t.dtype != torch.int64 or not t.is_contiguous() for t in (kept.in_rows, kept.out_rows, kept.steps)):
        raise ValueError("depthwise_rows takes contiguous int64 offsets")
    if (kept.in_rows.numel() != pixels * taps or kept.steps.numel() != pixels or bias.numel() != channels
            or fill.numel() != channels or out.numel() != images * kept.out_image or taps > 64):
        raise ValueError("depthwise_rows: shapes do not match, or more than 64 taps")
    geometry = torch.cat([torch.tensor([pixels, taps, kept.in_image, kept.out_image]), kept.steps])
    job = Job(kernel=3, isa=ISAS.index(isa()), rows=images * pixels, ntaps=taps, cin=channels, x=x.data_ptr(),
              w=weight.data_ptr(), bias=bias.data_ptr(), y=out.data_ptr(), zeros=_zero_row(channels).data_ptr(),
              fill=fill.data_ptr(), in_rows=kept.in_rows.data_ptr(), out_rows=kept.out_rows.data_ptr(),
              geometry=geometry.data_ptr(), lo=lo, hi=hi)
    return job, geometry


class Bands(NamedTuple):
    """How a `BandedCall` interleaves one image's producer and depthwise rows: per band, the
    producer rows made and the depthwise rows done by its end, and the first producer row it or a
    later band reads (int64, flat triples); and the rows of the ring the producer writes (the table
    of the depthwise conv reads row k at k % ring_rows)."""

    ends: torch.Tensor
    ring_rows: int


def image_parts(images: int, threads: int) -> int:
    """Parts of each image that threads share in a `BandedCall`: one where every thread has an image."""
    return 1 if images >= threads else -(-threads // images)


class BandedCall:
    """A rows-conv producer and the depthwise conv reading its kept rows from a ring, band by band,
    so that the producer's rows never leave the cache (kernels.c's producer_depthwise): `producer`
    is a rows-conv Job over one image (its input images `in_image` floats apart), `consumer` the
    depthwise Job over `images` images; the output images (the depthwise conv's, or the project's)
    are `out_image` floats apart. With a `project` Job (a rows conv over one image, its residual laid
    out as its output), each band's depthwise rows (at most `band_rows`) go to a buffer that the
    project conv reads at once. With fewer images than threads, each image's bands are shared
    between threads. `keep` holds tensors the Jobs point to. Made once for a batch size and thread
    count: `run` points the Jobs at one call's tensors (at batch 1, building the Jobs at every call
    took a quarter of MobileNetV2's forward)."""

    def __init__(self, producer: Job, consumer: Job, keep: tuple, bands: Bands, images: int, in_image: int,
                 out_image: int, project: Job | None = None, band_rows: int = 0):
        threads = torch.get_num_threads()
        parts = image_parts(images, threads)
        self.producer, self.consumer, self.project, self.keep, self.threads = producer, consumer, project, keep, threads
        self.fills = project is not None and bool(project.fill)  # the project conv writes its masked pixels
        self.ring = torch.empty(threads * bands.ring_rows * producer.cout)
        self.band = torch.empty(threads * band_rows * consumer.cin if project is not None else 0)
        self.in_numel, self.out_numel = images * in_image, images * out_image
        self.job = Job(kernel=4, isa=producer.isa, rows=images * parts, producer=ctypes.addressof(producer),
                       consumer=ctypes.addressof(consumer), bands=bands.ends.data_ptr(), nbands=bands.ends.numel() // 3,
                       nparts=parts, ring=self.ring.data_ptr(), ring_floats=bands.ring_rows * producer.cout,
                       in_image=in_image, project=ctypes.addressof(project) if project is not None else None,
                       band=self.band.data_ptr(), band_floats=band_rows * consumer.cin, out_image=out_image)
        per_image = producer.rows * max(producer.ntaps, 1) * producer.cin * producer.cout + consumer.rows // images \
            * consumer.ntaps * consumer.cin + (project.rows * project.cin * project.cout if project is not None else 0)
        self.work = images * per_image

    def run(self, x: torch.Tensor, out: torch.Tensor, residual: torch.Tensor | None = None) -> None:
        """The producer's input images `x`, into `out` (the project conv's output, or else the
        depthwise conv's), adding `residual` (laid out as `out`) where the project conv has one."""
        for t in (x, out) + ((residual,) if residual is not None else ()):
            if t.dtype != torch.float32 or not t.is_contiguous():
                raise ValueError("a banded call takes contiguous float32 tensors")
        if x.numel() != self.in_numel or out.numel() != self.out_numel or residual is not None and (
                self.project is None or residual.shape != out.shape):
            raise ValueError("a banded call: shapes do not match")
        if torch.get_num_threads() != self.threads:  # its ring and band buffer have a part per thread
            raise ValueError(f"this banded call was made for {self.threads} threads, not {torch.get_num_threads()}")
        self.producer.x = x.data_ptr()
        (self.project if self.project is not None else self.consumer).y = out.data_ptr()
        if self.project is not None:
            self.project.residual = residual.data_ptr() if residual is not None else None
        run_job(self.job, self.work)


def lists_size(pixels: int, cin: int) -> int:
    """int32 elements of the workspace `sparse_conv1x1` needs for `pixels` rows of `cin` channels."""
    return -(-pixels // TILE) * LIST_SLOTS * (cin + LIST_SLACK)
