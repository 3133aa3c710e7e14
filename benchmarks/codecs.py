"""Every codec on real activation maps and on synthetic sparse data: size and speed.

Real data: EfficientNet-Lite0 over the bundled photos, each site quantized with its own max scale
(8 and 16 bit); one stream per site and group of 4 photos (the setup of the issue's reference
figures). Synthetic: 4M values, 60 % zeros, geometric magnitudes. Per codec: bits per value,
compression ratio (raw b-bit size / stream size, headers included), encode and decode MB/s of the
raw quantized data (1 byte per value at 8 bits, 2 at 16), median of repeats, all in one process
beside zstd -3 / -19 and lz4, and the order-0 entropy of each stream as a bound. Repeats go
round the whole suite, so that drift in machine speed hits every codec alike.

    python benchmarks/codecs.py [--images 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import zstandard
import lz4.block

from actzip import codecs
from actzip.quant import code_dtype
from lite0_maps import lite0_streams

HERE = Path(__file__).parent


def synthetic_streams(bits: int, n: int = 4_000_000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    scale = 0.03 if bits == 8 else 0.0002
    u = np.minimum(rng.geometric(scale, n), 2**bits - 1)
    u[rng.random(n) < 0.6] = 0
    return [u.astype(code_dtype(bits, False))]


def entropy_bytes(a: np.ndarray) -> float:
    _, c = np.unique(a, return_counts=True)
    return float(-(c * np.log2(c / a.size)).sum() / 8)


def measure_suite(suite: list[tuple[str, dict]], streams: list[np.ndarray], bits: int, repeats: int,
                  label: str) -> list[dict]:
    """Every codec of the suite on the streams. Repeats go round the whole suite rather than
    codec by codec, so that a drift in machine speed over the minutes of a run slows every codec
    alike (zstd -19 runs once: it takes a minute)."""
    raw_bytes = sum(a.nbytes for a in streams)
    n = sum(a.size for a in streams)
    coders = [codecs.get(name, bits=bits, **params) for name, params in suite]
    for c in coders:
        c.decode(c.encode(streams[0][:1000]))  # compile kernels outside the clock
    enc_t, dec_t, sizes = [[] for _ in suite], [[] for _ in suite], [0] * len(suite)
    for rep in range(repeats):
        for i, c in enumerate(coders):
            if rep and suite[i][1].get("level") == 19:
                continue
            t = time.perf_counter()
            encoded = [c.encode(a) for a in streams]
            enc_t[i].append(time.perf_counter() - t)
            t = time.perf_counter()
            decoded = [c.decode(s) for s in encoded]
            dec_t[i].append(time.perf_counter() - t)
            assert all(np.array_equal(d, a.ravel()) for d, a in zip(decoded, streams)), suite[i]
            sizes[i] = sum(len(s) for s in encoded)
    rows = []
    for (name, params), coded, enc, dec in zip(suite, sizes, enc_t, dec_t):
        rows.append({"codec": name, **params, "bits_per_value": 8 * coded / n, "ratio": n * bits / (8 * coded),
                     "encode_MBps": raw_bytes / statistics.median(enc) / 1e6,
                     "decode_MBps": raw_bytes / statistics.median(dec) / 1e6, "bytes": coded})
        _print(label, name + "".join(f" {k}={v}" for k, v in params.items()), rows[-1])
    return rows


# ctx's model switched on part by part: adaptive bits alone, + channel statistics, + neighbours,
# neighbours without channel statistics, + repeat flags (the default at 8 bits), + the predictor
# (the default above 8 bits)
CTX_PARTS = [dict(neighbours=n, channel=c, repeats=r, prediction=p)
             for n, c, r, p in ((False, False, False, False), (False, True, False, False), (True, True, False, False),
                                (True, False, False, False), (True, False, True, False), (True, False, True, True))]
SUITE = [(name, {}) for name in codecs.names()] + [("zstd", {"level": 19})] + [("ctx", p) for p in CTX_PARTS]


def plain_baseline(label: str, streams: list[np.ndarray], repeats: int) -> dict:
    """zstd / lz4 as users call them: one call on each array's bytes, one thread, no chunks."""
    if label.startswith("zstd"):
        level = int(label.split("-")[1])
        compress = zstandard.ZstdCompressor(level=level).compress
        decompress = zstandard.ZstdDecompressor().decompress
    else:
        compress = lz4.block.compress
        decompress = lz4.block.decompress
    raw = [a.tobytes() for a in streams]
    enc_t, dec_t = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        packed = [compress(r) for r in raw]
        enc_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        for p in packed:
            decompress(p)
        dec_t.append(time.perf_counter() - t)
    total = sum(len(r) for r in raw)
    return {"codec": f"plain {label}", "ratio": total / sum(len(p) for p in packed),
            "encode_MBps": total / statistics.median(enc_t) / 1e6, "decode_MBps": total / statistics.median(dec_t) / 1e6}


def rans_model_bound(streams: list[np.ndarray], bits: int) -> tuple[float, float]:
    """(stream bytes, entropy of rans's own model plus its table bytes) over all streams: the model
    codes huffman's symbols (values, or bit-length escapes whose low bits go raw)."""
    from actzip.codecs.base import CHUNK, write_varint
    from actzip.codecs.bits import DIRECT_BITS, escape_symbol_counts

    codec = codecs.get("rans", bits=bits)
    coded = bound = 0.0
    for a in streams:
        coded += len(codec.encode(a))
        for i in range(0, a.size, CHUNK):
            u = codecs.base.zigzag(a.ravel()[i:i + CHUNK])
            direct = min(bits, DIRECT_BITS)
            counts, extra = escape_symbol_counts(u, direct, (1 << direct) + bits - direct)
            c = counts[counts > 0].astype(float)
            used = int(np.nonzero(counts)[0][-1]) + 1
            table = len(write_varint(used)) + sum(len(write_varint(int(v))) for v in counts[:used])
            bound += -(c * np.log2(c / c.sum())).sum() / 8 + extra / 8 + table
    return coded, bound


def _print(label: str, name: str, r: dict) -> None:
    print(f"{label:18s} {name:34s} {r['ratio']:6.3f}x enc {r['encode_MBps']:8.1f} dec {r['decode_MBps']:8.1f} MB/s",
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "codecs.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {"machine": platform.machine(), "threads": 2, "repeats": args.repeats, "datasets": {}}
    for bits in (8, 16):
        for label, streams in ((f"lite0-{bits}bit", lite0_streams(args.images, bits)),
                               (f"synthetic-{bits}bit", synthetic_streams(bits))):
            n = sum(a.size for a in streams)
            rows = measure_suite(SUITE, streams, bits, args.repeats, label)
            plain = [plain_baseline(b, streams, 1 if b == "zstd-19" else args.repeats)
                     for b in ("zstd-3", "zstd-19", "lz4")]
            for r in plain:
                _print(label, r["codec"], r)
            entropy = sum(entropy_bytes(a) for a in streams)
            coded, bound = rans_model_bound(streams, bits)
            results["datasets"][label] = {
                "values": n, "streams": len(streams), "order0_entropy_ratio": n * bits / (8 * entropy),
                "rans_bytes": coded, "rans_model_entropy_plus_table_bytes": bound,
                "rans_over_bound": coded / bound - 1, "codecs": rows, "plain_baselines": plain}
            print(f"{label:18s} order-0 entropy bound {n * bits / (8 * entropy):.3f}x; rans is "
                  f"{100 * (coded / bound - 1):.2f} % over its model's entropy + table", flush=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
