"""The codec peers benchmark's own pieces: the tiling the image coders see, and one small run."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
codec_peers = pytest.importorskip("codec_peers")


@pytest.mark.parametrize("dtype, bits", [(np.int8, 8), (np.uint8, 8), (np.int16, 16), (np.uint16, 16)])
def test_planes_tile_into_one_unsigned_image_holding_every_value(dtype, bits):
    info = np.iinfo(dtype)
    a = np.random.default_rng(0).integers(info.min, info.max, size=(2, 5, 3, 4), endpoint=True).astype(dtype)
    image = codec_peers.tiled(a, bits)
    assert image.dtype == (np.uint8 if bits == 8 else np.uint16) and image.ndim == 2
    assert image.shape == (3 * 3, 4 * 4)  # 10 planes in a grid of 3 rows and 4 columns of 3 x 4 planes
    offset = -int(info.min)
    assert image[:3, :4].astype(int).tolist() == (a[0, 0].astype(int) + offset).tolist()  # plane 0 at the top left
    assert image[3:6, 4:8].astype(int).tolist() == (a[1, 0].astype(int) + offset).tolist()  # plane 5: row 1, column 1
    assert sorted(image.reshape(-1)[image.reshape(-1) != 0].tolist()) == sorted(
        (a.reshape(-1).astype(int) + offset)[(a.reshape(-1).astype(int) + offset) != 0].tolist())


def test_every_coder_round_trips_and_is_timed_against_zstd():
    rng = np.random.default_rng(1)
    streams = [np.maximum(rng.integers(-40, 60, size=(2, 8, 6, 6)), 0).astype(np.uint8)]
    rows = codec_peers.measure(streams, 8, 1)
    names = {r["codec"] for r in rows}
    assert {"actzip ctx", "actzip ctxrans", "zstd -3", "zstd -19"} <= names
    assert all(r["ratio"] > 0.5 and r["encode_MBps"] > 0 for r in rows)
    assert next(r for r in rows if r["codec"] == "zstd -3")["encode_vs_zstd3"] == pytest.approx(1.0)
    try:
        import imagecodecs  # noqa: F401  (the image peers are optional)
    except ImportError:
        return
    assert {"JPEG-XL lossless e9", "JPEG-LS", "WebP lossless", "blosc2 zstd-5 shuffle"} <= names


@pytest.mark.parametrize("shape, dtype", [((2, 5, 3, 4), np.int8), ((3, 7), np.uint16)])
def test_a_stream_comes_back_from_its_tiled_image(shape, dtype):
    info = np.iinfo(dtype)
    a = np.random.default_rng(2).integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    back = codec_peers.untiled(codec_peers.tiled(a, 8 * a.itemsize), a)
    assert back.shape == a.shape and np.array_equal(back, a)


def test_rates_are_compared_at_exactly_the_same_error():
    rows = [{"codec": "a", "error": 1e-4, "bits_per_value": 4.0}, {"codec": "a", "error": 1e-2, "bits_per_value": 1.0}]
    assert codec_peers.rate_at(rows, "a", 1e-3) == pytest.approx(2.0)  # halfway in log-log
    assert codec_peers.rate_at(rows, "a", 1e-4) == pytest.approx(4.0)
    assert codec_peers.rate_at(rows, "a", 1e-1) is None and codec_peers.rate_at(rows, "b", 1e-3) is None


def test_each_dctcm_coder_stays_within_the_ceiling_and_the_page_compares_them():
    pytest.importorskip("imagecodecs")
    rng = np.random.default_rng(3)
    streams = [np.maximum(rng.normal(20, 30, size=(1, 16, 12, 12)), 0).astype(np.uint8)]
    rows = codec_peers.lossy(streams, [1e-3, 1e-2])
    ours = [r for r in rows if r["codec"] in codec_peers.DCTCM_CODERS]
    assert len(ours) == 4 and all(r["error"] <= r["ceiling"] and r["decode_MBps"] > 0 for r in ours)
    assert {"JPEG-LS near-lossless", "JPEG-XL lossy e7"} <= {r["codec"] for r in rows}
    page = codec_peers.lossy_tables(rows)
    assert all(f"as a ratio of {name}'s" in page for name in codec_peers.DCTCM_CODERS)


def test_ctxrans_is_timed_on_one_and_two_threads_and_left_as_it_was():
    from actzip import codecs

    rng = np.random.default_rng(4)
    streams = [np.maximum(rng.integers(-40, 60, size=(1, 8, 64, 64)), 0).astype(np.uint8)]
    before = codecs.threads()
    codecs.set_threads(3)  # not the default: the benchmark must put back what it found
    try:
        rows = codec_peers.scaling(streams, 8, 1)
        after = codecs.threads()
    finally:
        codecs.set_threads(before)
    assert {(r["threads"], r["step"]) for r in rows} == {(1, "encode"), (1, "decode"), (2, "encode"), (2, "decode")}
    assert all(r["spread"][0] <= r["MBps"] <= r["spread"][1] for r in rows) and after == 3
    assert "| 8 | decode |" in codec_peers.scaling_table(rows)
