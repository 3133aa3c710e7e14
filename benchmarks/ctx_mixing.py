"""What the context-mixing model of `ctx` buys, model by model, on maps not used for tuning it.

EfficientNet-Lite0's maps over the held-out photos (`lite0_maps.HELD_OUT`; the model was tuned on
the bundled photos), 8 and 16 bits, one stream per site and group of 4 photos, as in
benchmarks/codec_peers.py. For each width: `ctx` with its single-context model and with the mixing
model (ratio, and encode and decode MB/s of raw b-bit data over process CPU time, median of
`--repeats`), then the mixing model with each of its models switched off in turn (ratio, and what
the stream grows by without it). JPEG-XL's ratios and speeds are in codec_peers.

    python benchmarks/ctx_mixing.py [--images 6] [--repeats 2]
    python benchmarks/ctx_mixing.py --table   # docs/results/ctx_mixing.md from the JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from actzip import codecs
from actzip.codecs import mixing
from actzip.codecs.base import CHUNK
from actzip.codecs.layout import plane_shape
from actzip.fileio import atomic_write
from lite0_maps import held_out_photos, lite0_streams

HERE = Path(__file__).parent
MODELS = {  # bit of mixing.code's `disabled`: what the model sees
    0: "length: left, up, whether up-left and up-right are non-zero",
    1: "length: previous channel, non-zero neighbours, channel mean length",
    2: "length: median prediction, activity, two up",
    3: "length: channel zero rate, left, channel mean length",
    mixing.BIT_SHIFT: "bits: the bits so far",
    mixing.BIT_SHIFT + 1: "bits: prediction, left and up against the bits so far",
    mixing.BIT_SHIFT + 2: "bits: previous channel against the bits so far",
}


def mixed_bytes(streams: list[np.ndarray], bits: int, disabled: int) -> int:
    """Coded bytes of the streams under the mixing model with the `disabled` models off, chunked as ctx."""
    total = 0
    for s in streams:
        channels, height, width = plane_shape(s.shape)
        a = s.ravel().astype(np.int64)
        for start in range(0, a.size, CHUNK):
            chunk = a[start:start + CHUNK]
            c0, rest = divmod(start, height * width)
            y0, x0 = divmod(rest, width)
            out = np.zeros(chunk.size * 2 + 64, np.uint8)
            total += mixing.code(chunk, False, s.dtype.kind == "i", bits, width, height, channels, x0, y0,
                                 c0 % channels, out, 0, disabled)
    return total


def timed_codec(streams: list[np.ndarray], bits: int, mix: bool, repeats: int) -> dict:
    c = codecs.get("ctx", bits=bits, mixing=mix)
    raw = sum(s.size for s in streams) * bits / 8
    encode, decode, size = [], [], 0
    for _ in range(repeats):
        start = time.process_time()
        coded = [c.encode(s) for s in streams]
        encode.append(time.process_time() - start)
        start = time.process_time()
        for s, b in zip(streams, coded):
            assert np.array_equal(c.decode(b), s.ravel())
        decode.append(time.process_time() - start)
        size = sum(len(b) for b in coded)
    return {"ratio": raw / size, "encode_MBps": raw / 1e6 / statistics.median(encode),
            "decode_MBps": raw / 1e6 / statistics.median(decode)}


def measure(images: int, repeats: int) -> dict:
    result = {}
    for bits in (8, 16):
        streams = lite0_streams(images, bits, photos=held_out_photos())
        raw = sum(s.size for s in streams) * bits / 8
        row = {"values": sum(s.size for s in streams), "single": timed_codec(streams, bits, False, repeats),
               "mixing": timed_codec(streams, bits, True, repeats), "without": {}}
        full = mixed_bytes(streams, bits, 0)
        for bit, what in MODELS.items():
            size = mixed_bytes(streams, bits, 1 << bit)
            row["without"][what] = {"ratio": raw / size, "growth": size / full - 1}
            print(bits, what, f"{raw / size:.4f}", flush=True)
        result[str(bits)] = row
    return result


def table(d: dict) -> str:
    lines = [f"{d['images']} held-out photos; speeds over process CPU time, median of {d['repeats']}.", ""]
    for bits, row in d["widths"].items():
        lines += [f"## {bits}-bit codes ({row['values']:,} values)", "",
                  "| model | ratio | encode MB/s | decode MB/s |", "| --- | ---: | ---: | ---: |"]
        for name in ("single", "mixing"):
            r = row[name]
            lines.append(f"| ctx, {name} model | {r['ratio']:.4f}x | {r['encode_MBps']:.1f} | {r['decode_MBps']:.1f} |")
        lines += ["", "| mixing without | ratio | stream grows by |", "| --- | ---: | ---: |"]
        lines += [f"| {what} | {r['ratio']:.4f}x | {100 * r['growth']:.2f} % |" for what, r in row["without"].items()]
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="only write docs/results/ctx_mixing.md from the JSON")
    args = ap.parse_args()
    out = HERE / "ctx_mixing.json"
    if not args.table:
        data = {"images": args.images, "repeats": args.repeats, "widths": measure(args.images, args.repeats)}
        atomic_write(out, json.dumps(data, indent=1).encode())
    from pages import write_page

    print("wrote", write_page("ctx_mixing"))


if __name__ == "__main__":
    main()
