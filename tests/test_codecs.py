import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from actzip import codecs
from actzip.codecs import klt
from actzip.codecs.base import FREE_VALUES, pack_header, parallel_map, read_varint, write_varint
from actzip.codecs import context, native
from actzip.codecs.ctxrans import CLASSES, LANES_WANTED, SIZED, chunk_values, value_tables
from actzip.errors import ActzipWarning, CorruptStreamError

NAMES = codecs.names()
DTYPES = [np.uint8, np.int8, np.uint16, np.int16]


def value_range(dtype, bits):
    if np.dtype(dtype).kind == "i":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@st.composite
def activation_arrays(draw):
    """Integer arrays shaped like quantized activations: many zeros, small values, some extremes."""
    dtype = draw(st.sampled_from(DTYPES))
    width = np.dtype(dtype).itemsize * 8
    bits = draw(st.integers(1, width))
    lo, hi = value_range(dtype, bits)
    shape = draw(st.sampled_from([(0,), (1,), (7,), (3, 5), (2, 3, 4, 5), (600,)]))
    values = st.one_of(st.just(0), st.integers(lo, hi), st.sampled_from([lo, hi]),
                       st.integers(max(lo, -3), min(hi, 3)))
    return draw(arrays(dtype, shape, elements=values)), bits


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=activation_arrays())
def test_round_trip_is_bit_exact(name, data):
    a, bits = data
    c = codecs.get(name, bits=bits)
    out = c.decode(c.encode(a))
    assert out.dtype == a.dtype and out.shape == (a.size,)
    assert np.array_equal(out, a.ravel())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_arrays(name, dtype):
    width = np.dtype(dtype).itemsize * 8
    lo, hi = value_range(dtype, width)
    rng = np.random.default_rng(0)
    cases = [np.zeros(0, dtype), np.array([hi], dtype), np.zeros(5000, dtype), np.full(3000, lo, dtype),
             rng.integers(1, hi, 4000).astype(dtype),  # no zero at all
             np.tile(np.array([lo, 0, hi, 1], dtype), 999)]
    c = codecs.get(name)
    for a in cases:
        assert np.array_equal(c.decode(c.encode(a)), a)


@pytest.mark.parametrize("name", NAMES)
def test_values_outside_the_bit_width_are_refused(name):
    with pytest.raises(ValueError, match="outside the 4-bit range"):
        codecs.get(name, bits=4).encode(np.array([0, 16], np.uint8))
    with pytest.raises(ValueError, match="outside the 4-bit range"):
        codecs.get(name, bits=4).encode(np.array([-9], np.int8))
    with pytest.raises(TypeError):
        codecs.get(name).encode(np.zeros(3, np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    c = codecs.get(name, bits=8)
    assert codecs.from_config(c.get_config()) == c
    assert c.get_config()["id"] == name == c.codec_id


def test_seg_and_eg_costs_are_as_documented():
    rng = np.random.default_rng(0)
    a = np.where(rng.random(999) < 0.4, 0, rng.integers(0, 256, 999)).astype(np.uint8)
    lanes = [a[j * a.size // 4:(j + 1) * a.size // 4] for j in range(4)]  # every lane < 128 words
    for k in range(4):
        def eg_len(x):
            return 2 * int(np.floor(np.log2(x + 2**k))) - k + 1

        def size(bits_of):  # dtype, bits, 2-byte count; 2-byte chunk size; k; 3 lane word counts; words
            return 4 + 2 + 1 + 3 + sum(8 * -(-sum(bits_of(int(x)) for x in lane) // 64) for lane in lanes)

        assert len(codecs.get("seg", k=k).encode(a)) == size(lambda x: 1 if x == 0 else 1 + eg_len(x - 1))
        assert len(codecs.get("eg", k=k).encode(a)) == size(eg_len)


def test_k_is_chosen_to_minimise_size():
    a = np.random.default_rng(0).geometric(0.01, 5000).astype(np.uint16)
    best = len(codecs.get("eg").encode(a))
    assert best == min(len(codecs.get("eg", k=k).encode(a)) for k in range(17))


def test_rle_run_field_is_chosen_to_minimise_size():
    rng = np.random.default_rng(1)
    a = np.where(rng.random(60_000) < 0.7, 0, rng.integers(1, 256, 60_000)).astype(np.uint8)
    a[1000:4000] = 0  # runs past the token-count histogram's bins
    a[10_000:80_000] = 0  # and past the longest run field, reaching the end of the stream
    sizes = [len(codecs.get("rle", run_bits=r).encode(a)) for r in range(17)]
    assert len(codecs.get("rle").encode(a)) == min(sizes)
    assert np.array_equal(codecs.get("rle").decode(codecs.get("rle").encode(a)), a)


@settings(max_examples=40, deadline=None)
@given(counts=arrays(np.int64, st.integers(2, 2100), elements=st.one_of(st.just(0), st.integers(1, 300))),
       seed=st.integers(0, 2**32 - 1))
def test_rans_decoder_reads_constriction_streams(counts, seed):
    """rans decodes without constriction: it must rebuild constriction's quantized model exactly
    and follow its ANS steps (this fails if a constriction release changes either)."""
    import constriction

    from actzip.codecs.rans import _decode_symbols, _model

    counts[[0, -1]] += 1
    symbols = np.repeat(np.arange(counts.size, dtype=np.int32), counts)
    np.random.default_rng(seed).shuffle(symbols)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, _model(counts))
    words = coder.get_compressed()
    assert np.array_equal(_decode_symbols(words, counts, symbols.size), symbols)
    for damaged in (words[1:], words[:-1], words ^ np.uint32(1 << 7)):  # still bounded and memory-safe
        out = _decode_symbols(damaged, counts, symbols.size)
        assert out is None or (out.size == symbols.size and out.max() < counts.size)


def test_rans_lands_on_the_entropy_of_its_model():
    rng = np.random.default_rng(0)
    a = np.minimum(rng.geometric(0.05, 200_000) - 1, 255).astype(np.uint8)
    a[rng.random(a.size) < 0.4] = 0
    _, counts = np.unique(a, return_counts=True)
    entropy_bytes = -(counts * np.log2(counts / a.size)).sum() / 8
    stream = codecs.get("rans").encode(a)
    table = len(write_varint(256)) + sum(len(write_varint(int(c))) for c in np.bincount(a, minlength=a.max() + 1))
    assert len(stream) <= 1.01 * (entropy_bytes + table) + 16


def _ctxrans_symbols(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """ctxrans's symbols, contexts and raw bit count for a (..., H, W) array, in plain numpy."""

    symbol_of, raw_of, class_of = value_tables(8)
    u = a.astype(np.int64)
    cls = class_of[u]
    left = np.zeros_like(cls)
    left[..., 1:] = cls[..., :-1]
    up = np.zeros_like(cls)
    up[..., 1:, :] = cls[..., :-1, :]
    return symbol_of[u].ravel(), (left.astype(np.int64) * CLASSES + up).ravel(), int(raw_of[u].sum())


@pytest.mark.parametrize("name", codecs.names())
@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_a_map_of_zeros_over_several_chunks_round_trips(name, dtype):
    """A dead layer: the adaptive coders code a long run of zeros at a tiny fraction of a bit per
    value, which the decoders' bound on the values a chunk may claim must allow."""
    a = np.zeros((1, 4, 1, (1 << 18) + 5), dtype)
    a[0, 1, 0, 7] = 3
    c = codecs.get(name)
    assert np.array_equal(c.decode(c.encode(a)), a.ravel())


def test_ctxrans_lands_on_the_conditional_entropy_of_its_symbols():
    rng = np.random.default_rng(0)
    blobs = np.maximum(rng.normal(size=(2, 8, 200, 200)).cumsum(-1).cumsum(-2) / 8 - 2, 0)  # smooth, mostly zeros
    a = np.minimum(blobs * 30, 255).astype(np.uint8)
    symbols, contexts, raw_bits = _ctxrans_symbols(a)  # as if in one chunk: a little off at chunk starts
    joint = np.unique(contexts * 256 + symbols, return_counts=True)[1]
    per_context = np.unique(contexts, return_counts=True)[1]
    entropy = -(joint * np.log2(joint)).sum() + (per_context * np.log2(per_context)).sum()
    stream = codecs.get("ctxrans").encode(a)
    floor = (entropy + raw_bits) / 8
    # on top: the table (at most 2 bytes per used cell and 1 per unused one below it), 10 bytes a chunk
    assert floor < len(stream) <= 1.01 * floor + 2 * 81 * 36 + 10 * -(-a.size // chunk_values(a.size))
    assert len(stream) < 0.95 * len(codecs.get("rans").encode(a))  # the neighbours are worth it here


def test_ctxrans_cuts_a_stream_into_whole_groups_of_lanes_for_two_cores():
    for n in (1, 5000, 32 << 11, (32 << 11) + 1, 326_700, (32 << 14) - 1, 32 << 14, (32 << 14) + 1, 10**8):
        chunk = chunk_values(n)
        count = -(-n // chunk)
        assert 2048 <= chunk <= 1 << 14
        assert count % LANES_WANTED == 0 or chunk == 2048  # every lane of both cores busy
    a = _chunky(3, (2, 4, 60, 60), np.uint8, 8, 0.5)
    stream = bytearray(codecs.get("ctxrans").encode(a))
    at = len(pack_header(a.ravel(), 8)) + 1
    for bad in (b"\x00", b"\x81\x80\x04"):  # a size of 0, of 2^16 + 1
        with pytest.raises(CorruptStreamError, match="chunk size"):
            codecs.get("ctxrans").decode(bytes(stream[:at]) + bad + bytes(stream[at + 2:]))


@pytest.mark.parametrize("shape, dtype", [((2, 3, 300, 301), np.uint8), ((3, 5, 97, 211), np.int16),
                                          ((200_000,), np.uint8), ((1000, 300), np.int8)])
def test_ctxrans_chunks_split_rows_and_planes_anywhere(shape, dtype):
    """Chunks start mid-row and mid-plane; a 1-D array is one row longer than a chunk."""
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    a = rng.integers(info.min // 4, info.max // 4, size=shape).astype(dtype)
    a[rng.random(shape) < 0.5] = 0
    c = codecs.get("ctxrans")
    stream = c.encode(a)
    at = len(pack_header(a.ravel(), a.dtype.itemsize * 8))
    assert stream[at] == SIZED and read_varint(stream, at + 1, "")[0] == chunk_values(a.size)  # coded, not raw
    assert np.array_equal(c.decode(stream), a.ravel())


CTXRANS_PATHS = ["numba", "c", "avx512"]  # the fallback loops, the compiled coder in portable C and with AVX-512


def _use_ctxrans(monkeypatch, path: str) -> None:
    """Run ctxrans through `path` (skipped where this machine cannot)."""
    if path == "numba":
        monkeypatch.setattr(native, "library", lambda: None)
        monkeypatch.setattr(native, "warn_if_missing", lambda: None)
        return
    if native.library() is None:
        pytest.skip("the codec kernels are not built")
    if path == "avx512" and native.best_isa() != "avx512":
        pytest.skip("this CPU has no AVX-512")
    monkeypatch.setenv("ACTZIP_ISA", path)


def _chunky(seed: int, shape: tuple, dtype, bits: int, zeros: float) -> np.ndarray:
    """Smooth codes with runs of zeros, of `bits` bits, over several ctxrans chunks."""
    rng = np.random.default_rng(seed)
    lo, hi = value_range(dtype, bits)
    x = np.cumsum(rng.integers(-3, 4, shape), axis=-1) * max(1, hi // 64)
    x[rng.random(shape) < zeros] = 0
    return x.clip(lo, hi).astype(dtype)


CHUNKY_SHAPES = [(3, 9, 100, 121),  # 32 chunks, the last short: two full groups of 16 lanes
                 (1, 1, 130, 2**14 + 5),  # rows longer than a chunk: no upper neighbours; 160 chunks
                 (40_000,),  # 20 chunks: a second group of 4 lanes
                 (32_773,),  # 17 chunks: a second group of one chunk of 5 values, the first goes on alone
                 (5, 1, 1, 9000), (2, 1, 300, 1), (1, 3, 2**14, 1)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 99), shape=st.sampled_from(CHUNKY_SHAPES), dtype=st.sampled_from(DTYPES),
       bits=st.sampled_from([3, 8, 11, 16]), zeros=st.sampled_from([0.0, 0.5, 0.95, 1.0]))
def test_ctxrans_compiled_and_numba_coders_agree_to_the_bit(seed, shape, dtype, bits, zeros):
    """The C encoder writes the numba encoder's stream, and every decoder reads it back exactly,
    over many chunks, rows longer than a chunk and planes of one column."""
    bits = min(bits, np.dtype(dtype).itemsize * 8)
    a = _chunky(seed, shape, dtype, bits, zeros)
    with pytest.MonkeyPatch.context() as mp:
        _use_ctxrans(mp, "numba")
        reference = codecs.get("ctxrans", bits=bits).encode(a)
    for path in CTXRANS_PATHS:
        with pytest.MonkeyPatch.context() as mp:
            try:
                _use_ctxrans(mp, path)
            except pytest.skip.Exception:
                continue
            c = codecs.get("ctxrans", bits=bits)
            assert c.encode(a) == reference
            out = c.decode(reference)
            assert out.dtype == a.dtype and np.array_equal(out, a.ravel())


@pytest.mark.parametrize("path", CTXRANS_PATHS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
@pytest.mark.parametrize("shape", [(32_773,), (40_000,), (2, 9, 100, 121), (1, 1, 130, 2**14 + 5)])
def test_ctxrans_decodes_two_groups_of_lanes_in_turns(monkeypatch, path, dtype, shape):
    """The AVX-512 decoder steps two groups of chunks in turns: a second group of one short chunk,
    of a few lanes, of full lanes, and groups left over after the pairs all decode exactly."""
    _use_ctxrans(monkeypatch, path)
    bits = 8 if dtype == np.uint8 else 12
    a = _chunky(3, shape, dtype, bits, 0.6)
    c = codecs.get("ctxrans", bits=bits)
    before = codecs.threads()
    try:
        codecs.set_threads(1)  # one thread's share holds every group
        assert np.array_equal(c.decode(c.encode(a)), a.ravel())
    finally:
        codecs.set_threads(before)


@pytest.mark.parametrize("path", CTXRANS_PATHS)
@pytest.mark.parametrize("bits", range(2, 17))
def test_ctxrans_decodes_every_bit_depth_at_full_range(monkeypatch, path, bits):
    """Values of every length up to the top of the range: the AVX-512 decoder refills its raw
    bits every 25 // (bits - 3) steps, which must hold even when every value takes the most."""
    _use_ctxrans(monkeypatch, path)
    rng = np.random.default_rng(bits)
    hi = (1 << bits) - 1
    a = rng.integers(hi // 2, hi + 1, (4, 8, 64, 64)) * (rng.random((4, 8, 64, 64)) < 0.3)  # zeros to shrink it
    a = a.astype(np.uint8 if bits <= 8 else np.uint16)
    c = codecs.get("ctxrans", bits=bits)
    stream = c.encode(a)
    assert len(stream) < a.size * bits / 8  # coded, not stored raw
    assert np.array_equal(c.decode(stream), a.ravel())


@pytest.mark.parametrize("path", CTXRANS_PATHS)
def test_the_codec_thread_count_changes_neither_streams_nor_values(monkeypatch, path):
    """One thread codes in the calling thread, three split the chunks three ways: the same bytes."""
    _use_ctxrans(monkeypatch, path)
    a = _chunky(2, CHUNKY_SHAPES[0], np.uint8, 8, 0.5)
    c = codecs.get("ctxrans")
    before, streams = codecs.threads(), []
    try:
        for n in (1, 3):
            codecs.set_threads(n)
            assert codecs.threads() == n
            streams.append(c.encode(a))
            assert np.array_equal(c.decode(streams[-1]), a.ravel())
    finally:
        codecs.set_threads(before)
    assert streams[0] == streams[1]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive int"):
            codecs.set_threads(bad)


def test_parallel_map_keeps_order_and_works_in_the_calling_thread():
    """The caller takes the first item itself; the results come back in the items' order."""
    before = codecs.threads()
    try:
        codecs.set_threads(2)
        got = parallel_map(lambda i: (i, threading.current_thread().name), list(range(5)))
    finally:
        codecs.set_threads(before)
    assert [i for i, _ in got] == list(range(5))
    assert got[0][1] == threading.current_thread().name
    assert all(name.startswith("actzip-codec") for _, name in got[1:])


def test_ctxrans_without_the_compiled_coder_warns_once_and_codes(monkeypatch):
    monkeypatch.setattr(native, "library", lambda: None)
    native.warn_if_missing.cache_clear()
    a = _chunky(1, (2, 3, 40, 50), np.int16, 11, 0.5)
    c = codecs.get("ctxrans")
    with pytest.warns(ActzipWarning, match="not built"):
        stream = c.encode(a)
    assert np.array_equal(c.decode(stream), a.ravel())
    native.warn_if_missing.cache_clear()


@pytest.mark.parametrize("path", CTXRANS_PATHS)
def test_ctxrans_decoders_refuse_damaged_chunks(monkeypatch, path):
    """Cut, shortened or flipped chunks of a many-chunk stream: CorruptStreamError, or (a flipped raw
    bit) other values of the right count; never another error or a read out of bounds."""
    _use_ctxrans(monkeypatch, path)
    a = _chunky(0, CHUNKY_SHAPES[0], np.uint8, 8, 0.5)
    c = codecs.get("ctxrans")
    stream = c.encode(a)
    rng = np.random.default_rng(0)
    damaged = [stream[:n] for n in (len(stream) - 1, len(stream) // 2, 40)]
    for _ in range(30):
        b = bytearray(stream)
        for at in rng.integers(20, len(b), rng.integers(1, 4)):
            b[at] ^= 1 << int(rng.integers(8))
        damaged.append(bytes(b))
    refused = 0
    for bad in damaged:
        try:
            assert c.decode(bad).shape == (a.size,)
        except CorruptStreamError:
            refused += 1
    assert refused >= len(damaged) // 2


def _ctx_sizes(a: np.ndarray, **off) -> tuple[int, int]:
    """Stream sizes of `ctx` with its defaults and with the named features off; both decode exactly."""
    full, reduced = codecs.get("ctx"), codecs.get("ctx", **off)
    sizes = []
    for c in (full, reduced):
        stream = c.encode(a)
        assert np.array_equal(full.decode(stream), a.ravel())  # the stream, not the decoder, says what is on
        sizes.append(len(stream))
    return sizes[0], sizes[1]


def test_ctx_codes_a_flat_background_as_repeats():
    """A conv over a black background gives one constant per channel: after the first value of a
    run, each repeat is one well-predicted flag instead of a 13-bit code."""
    rng = np.random.default_rng(0)
    a = np.zeros((4, 28, 28), np.uint16)
    a[:] = np.array([1000, 5000, 0, 777], np.uint16)[:, None, None]
    a[:, 8:20, 8:20] = rng.integers(0, 60000, (4, 12, 12))  # the object: no repeats
    with_repeats, without = _ctx_sizes(a, repeats=False, prediction=False)
    object_bytes = 4 * 144 * 2  # random 16-bit values cost what they are
    assert with_repeats - object_bytes < 0.2 * (without - object_bytes)


def test_ctx_codes_residuals_of_smooth_maps():
    """On a smooth 16-bit ramp with +-8 of noise the median predictor's residuals (noise of four
    values) cost ~7 bits where the values cost ~14."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:40, :40]
    a = (20000 + 300 * x + 200 * y + rng.integers(-8, 9, (3, 40, 40))).astype(np.uint16)
    predicted, plain = _ctx_sizes(a, prediction=False)
    assert predicted < 0.6 * plain


@pytest.mark.parametrize("dtype, bits", [(np.uint8, 8), (np.uint16, 16), (np.int8, 8), (np.int16, 16),
                                         (np.int16, 12)])
def test_ctx_residuals_span_the_whole_range(dtype, bits):
    """Neighbours at one end and a value at the other: the residual needs bits + 1 bits."""
    lo, hi = value_range(dtype, bits)
    lo = max(lo, 1) if lo == 0 else lo
    a = np.where((np.indices((2, 9, 9)).sum(0) % 2) == 0, hi, lo).astype(dtype)
    a[:, 3, 3] = lo  # a residual of lo - hi, and hi - lo next to it
    c = codecs.get("ctx", bits=bits)
    assert np.array_equal(c.decode(c.encode(a)), a.ravel())


@pytest.mark.parametrize("dtype, flags", [(np.uint8, context.MIXING), (np.uint16, 1 | 4 | 8)])
def test_ctx_flags_its_model_and_refuses_unknown_flags(dtype, flags):
    """By default: the mixing model up to 8 bits; above, neighbours, repeats and the predictor."""
    a = np.zeros((1, 10, 10), dtype)
    a[0, 3:6, 3:6] = 100
    c = codecs.get("ctx")
    b = bytearray(c.encode(a))
    bits = 8 * np.dtype(dtype).itemsize
    chunk = len(b) - len(c._encode_chunk(a.ravel(), bits, a.shape, 0))  # one chunk, at the end
    assert b[chunk] == context.CODED and b[chunk + 1] == flags
    b[chunk + 1] = 17
    with pytest.raises(CorruptStreamError, match="context flags"):
        codecs.get("ctx").decode(bytes(b))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 99), shape=st.sampled_from([(2, 3, 9, 11), (1, 40, 1, 1), (3, 1, 17, 1), (500,)]),
       dtype=st.sampled_from(DTYPES), bits=st.integers(1, 16), zeros=st.sampled_from([0.0, 0.5, 1.0]))
def test_ctx_mixing_round_trips_at_every_width(seed, shape, dtype, bits, zeros):
    bits = min(bits, np.dtype(dtype).itemsize * 8)
    a = _chunky(seed, shape, dtype, bits, zeros)
    a[..., ::7] = value_range(dtype, bits)[seed % 2]  # both ends of the range
    c = codecs.get("ctx", bits=bits, mixing=True)
    assert np.array_equal(c.decode(c.encode(a)), a.ravel())


@pytest.mark.parametrize("shape, dtype", [((2, 3, 300, 301), np.uint8), ((2, 2, 250, 270), np.int16)])
def test_ctx_mixing_chunks_start_mid_plane(shape, dtype):
    """Over 2^18 values: the second chunk starts mid-row and mid-plane, its neighbours unseen."""
    a = _chunky(5, shape, dtype, 8 * np.dtype(dtype).itemsize, 0.4)
    c = codecs.get("ctx", mixing=True)
    assert np.array_equal(c.decode(c.encode(a)), a.ravel())


def test_ctx_mixing_sees_the_layout_channels_share():
    """Channels that share where they are zero (as the channels of a conv over one object do), with
    smooth values: the mixing model, which sees the previous channel and the median prediction,
    codes them in well under the single model's size (measured 0.50x)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:48, :48]
    on = (np.sin(x / 5) + np.cos(y / 7) + rng.normal(0, 0.3, (48, 48))) > 0.3
    a = np.stack([np.where(on, 40 + 9 * k + 2 * x + y + rng.integers(-2, 3, (48, 48)), 0) for k in range(16)])
    mixed, single = _ctx_sizes(a.clip(0, 255).astype(np.uint8)[None], mixing=False)
    assert mixed < 0.6 * single


def _streams():
    rng = np.random.default_rng(1)
    sparse = np.maximum(rng.integers(-60, 200, 3000), 0).astype(np.uint8)
    signed = rng.integers(-2000, 2000, 2000).astype(np.int16)
    signed[rng.random(2000) < 0.5] = 0
    maps = sparse[:2880].reshape(2, 20, 72)
    lossy = [("dctcm", codecs.get("dctcm", bits=8, keep=3, step=2.0, coder=coder, transform=t).encode(maps))
             for coder in ("zvc", "rans", "ctxrans") for t in (True, False)]
    lossy.append(("dctcm", codecs.get("dctcm", bits=8, transform=False, coder="ctxrans",
                                      channel_steps=[2.0 ** (k / 4) for k in range(20)]).encode(maps)))
    lossy += [("requant", codecs.get("requant", bits=8, step=2.0, coder=coder).encode(maps)) for coder in ("zvc", "rans")]
    lossy.append(("requant", codecs.get("requant", bits=8, channel_steps=[2.0 ** (k / 4) for k in range(20)]).encode(maps)))
    # planes give ctx's repeat flags and predicted residuals something to decode
    planes = [("ctx", codecs.get("ctx", mixing=mix).encode(a)) for a in (maps, signed[:1800].reshape(3, 20, 30))
              for mix in (None, True, False)]
    fitted = klt.fit(maps)  # klt decodes with the settings it was fitted with (side information)
    _DECODERS["klt"] = codecs.get("klt", bits=8, step=2.0, **fitted,
                                  offsets=klt.offsets(maps, 8, fitted["basis"], fitted["mean"], 2.0))
    learned = [("klt", _DECODERS["klt"].encode(maps))]
    return [(name, codecs.get(name).encode(a)) for name in NAMES for a in (sparse, signed)] + lossy + planes + learned


_DECODERS = {}  # codecs that cannot decode from their name alone


def _decode_or_corrupt(name, data):
    try:
        out = (_DECODERS.get(name) or codecs.get(name)).decode(data)
    except CorruptStreamError:
        return 1
    assert out.ndim == 1  # a mutation the format cannot see may decode; it must still be an array
    return 0


def _fuzz_one(data, codec=None):
    """Truncation, bit flips, garbage appended, random bytes, forged counts: a CorruptStreamError
    or an array, never a crash, a hang (the deadline) or another exception."""
    streams = [s for s in _streams_cache() if codec is None or s[0] == codec]
    name, stream = data.draw(st.sampled_from(streams))
    kind = data.draw(st.sampled_from(["truncate", "flip", "append", "random", "header"]))
    b = bytearray(stream)
    if kind == "truncate":
        b = b[: data.draw(st.integers(0, len(b) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "append":
        b += data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "random":
        b = bytearray(data.draw(st.binary(max_size=300)))
    else:  # rewrite the value count
        n = data.draw(st.sampled_from([0, 1, 10**6, 2**31, 2**40, 2**63]))
        b = bytearray(b[:2] + write_varint(n) + b[2 + len(write_varint(3000)):])
    _decode_or_corrupt(name, bytes(b))


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_streams(data):
    _fuzz_one(data)


@pytest.mark.slow
@pytest.mark.parametrize("codec", codecs.names(lossy=True))
@settings(max_examples=10000, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_streams_long(codec, data):
    """10^4 mutated streams per codec (`make test-slow`)."""
    _fuzz_one(data, codec)


_CACHE = []


def _streams_cache():
    if not _CACHE:
        _CACHE.extend(_streams())
        for name, stream in _CACHE:  # decoders compile here, not within a fuzz example's deadline
            _decode_or_corrupt(name, stream)
    return _CACHE


@pytest.mark.parametrize("name", NAMES)
def test_huge_claimed_count_is_refused_before_allocating(name):
    a = np.zeros(10, np.uint8)
    payload = codecs.get(name).encode(a)[3:]
    for n in (FREE_VALUES + 1, 2**31, 2**40):
        forged = pack_header(a, 8)[:2] + write_varint(n) + payload
        with pytest.raises(CorruptStreamError):
            codecs.get(name).decode(forged)


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_and_single_bit_flip_of_the_header(name):
    stream = codecs.get(name).encode(np.array([0, 3, 0, 0, 250, 1, 0, 9] * 50, np.uint8))
    for cut in range(len(stream)):  # every proper prefix is refused
        with pytest.raises(CorruptStreamError):
            codecs.get(name).decode(stream[:cut])
    for i in range(min(len(stream), 12)):
        for bit in range(8):
            b = bytearray(stream)
            b[i] ^= 1 << bit
            _decode_or_corrupt(name, bytes(b))


def test_numcodecs_and_zarr_store_activations():
    numcodecs = pytest.importorskip("numcodecs")
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(0)
    for dtype, name in [(np.uint8, "seg"), (np.int16, "huffman"), (np.uint16, "rans")]:
        codec = numcodecs.get_codec({"id": f"actzip.{name}"})  # found through the entry point
        a = rng.integers(-50, 200, (4, 8, 6, 6)).clip(0 if dtype != np.int16 else -50, None).astype(dtype)
        store = zarr.storage.MemoryStore()
        z = zarr.create_array(store, shape=a.shape, chunks=(2, 8, 6, 6), dtype=a.dtype, zarr_format=2,
                              compressors=codec)
        z[:] = a
        assert np.array_equal(zarr.open_array(store, mode="r")[:], a)
