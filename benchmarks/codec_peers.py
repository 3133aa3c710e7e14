"""actzip's lossless coders against the coders a user would pick instead, on the same real maps.

The maps: EfficientNet-Lite0 over photos, each site quantized with its own max scale at 8 and 16
bits, one stream per site and group of 4 photos (as benchmarks/codecs.py), on two photo sets: the
bundled photos, and scikit-image photos that are not among them and were not used for tuning
anything (`lite0_maps.HELD_OUT`). The peers, where their packages are installed (`pip install
'actzip[peers]'`):
- image coders on the channel planes of each stream tiled into one grey image (values offset to
  unsigned for signed maps): JPEG-XL lossless at effort 7 and 9, JPEG-LS, WebP lossless (8-bit
  only; the grey image as RGB);
- blosc2 with zstd level 5 and each of its shuffles (the table keeps the best), and plain zstd -3
  and -19 on the raw bytes.
Lossy, 8-bit maps of the held-out photos: each coder's bits per value at the same per-stream error
ceiling (relative squared error of the codes, as every actzip budget): dctcm (G = 16) given the
ceiling as its budget, with its default inner coder (ctxrans) and with ctx; JPEG-LS near-lossless
at the largest NEAR within the ceiling; JPEG-XL lossy (effort 7) at the largest of a grid of
distances within it, or lossless.
The achieved aggregate error is reported beside the rate.
Scaling: ctxrans's wall-clock speed on the held-out photos with 1 and 2 codec threads, timed in
turns.
Ratio: raw b-bit size over coded size, summed over streams. Speed: MB/s of raw b-bit data over the
CPU time of the process, one thread each (the peers are asked for one, actzip's codecs set to one;
a coder that still ran more would be charged for all of them), each stream by every coder in turn,
median over repeats (JPEG-XL effort 9 once: it is slow), and as a ratio of plain zstd -3's speed in
the same run. The scaling section gives ctxrans's wall-clock speed on two threads.

    python benchmarks/codec_peers.py [--images 6] [--repeats 3] [--ceilings 5e-5 1e-4 ... 2e-2]
    python benchmarks/codec_peers.py --lossy-only | --scaling-only   # one part again, into the JSON
    python benchmarks/codec_peers.py --table   # docs/results/codec_peers.md from the JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import zstandard

from actzip import codecs
from lite0_maps import held_out_photos, lite0_streams

HERE = Path(__file__).parent


def tiled(a: np.ndarray, bits: int) -> np.ndarray:
    """The planes of a (N, C, H, W) stream in a near-square grid, as one unsigned grey image (other
    shapes: their last axis as rows of one image)."""
    unsigned = (a.astype(np.int64) - (np.iinfo(a.dtype).min if a.dtype.kind == "i" else 0)).astype(
        np.uint8 if bits <= 8 else np.uint16)
    if a.ndim != 4:
        return unsigned.reshape(-1, a.shape[-1])
    planes = unsigned.reshape(-1, *a.shape[-2:])
    cols = math.ceil(math.sqrt(len(planes)))
    rows = -(-len(planes) // cols)
    grid = np.zeros((rows * cols, *a.shape[-2:]), unsigned.dtype)
    grid[:len(planes)] = planes
    return grid.reshape(rows, cols, *a.shape[-2:]).transpose(0, 2, 1, 3).reshape(rows * a.shape[-2], -1)


def image_peers(bits: int) -> dict:
    """name: (encode(image) -> bytes, decode(bytes) -> image) of the image coders installed."""
    try:
        import imagecodecs as ic
    except ImportError:
        return {}
    peers = {f"JPEG-XL lossless e{e}": (lambda x, e=e: ic.jpegxl_encode(x, lossless=True, effort=e, numthreads=1),
                                        lambda b: ic.jpegxl_decode(b, numthreads=1)) for e in (7, 9)}
    peers["JPEG-LS"] = (lambda x: ic.jpegls_encode(x), ic.jpegls_decode)
    if bits <= 8:
        peers["WebP lossless"] = (lambda x: ic.webp_encode(np.repeat(x[..., None], 3, 2), lossless=True),
                                  lambda b: ic.webp_decode(b)[..., 0])
    return peers


def byte_peers() -> dict:
    """name: (encode(bytes) -> bytes, decode(bytes) -> bytes) of the general-purpose coders."""
    peers = {f"zstd -{level}": (zstandard.ZstdCompressor(level=level).compress,
                                zstandard.ZstdDecompressor().decompress) for level in (3, 19)}
    try:
        import blosc2
    except ImportError:
        return peers
    for name, f in (("noshuffle", blosc2.Filter.NOFILTER), ("shuffle", blosc2.Filter.SHUFFLE),
                    ("bitshuffle", blosc2.Filter.BITSHUFFLE)):
        peers[f"blosc2 zstd-5 {name}"] = (
            lambda b, f=f: blosc2.compress2(b, codec=blosc2.Codec.ZSTD, clevel=5, filters=[f], nthreads=1),
            lambda b: blosc2.decompress2(b, nthreads=1))
    return peers


def coders(bits: int) -> dict:
    """name: (encode(stream) -> bytes, decode(bytes, stream) -> array equal to the stream)."""
    out = {}
    other_model = {"mixing": bits > 8}  # ctx's model that its default does not use at this width
    for name, params in (("ctx", {}), ("ctx", other_model), ("ctxrans", {})):
        codec = codecs.get(name, bits=bits, **params)
        label = "actzip " + name + "".join(f" {k}={v}" for k, v in params.items())
        out[label] = (codec.encode, lambda b, s, c=codec: c.decode(b).reshape(s.shape))
    for name, (enc, dec) in image_peers(bits).items():
        out[name] = (lambda s, enc=enc: enc(tiled(s, bits)), lambda b, s, dec=dec: dec(b))
    for name, (enc, dec) in byte_peers().items():
        out[name] = (lambda s, enc=enc: enc(s.tobytes()),
                     lambda b, s, dec=dec: np.frombuffer(dec(b), s.dtype).reshape(s.shape))
    return out


def _timed(fn, *args):
    """fn's result and the CPU time of the whole process it took (a coder that ran threads is
    charged for all of them)."""
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


@contextlib.contextmanager
def codec_threads(n: int):
    """actzip's codecs on n threads inside the block, as they were after it."""
    before = codecs.threads()
    codecs.set_threads(n)
    try:
        yield
    finally:
        codecs.set_threads(before)


def measure(streams: list[np.ndarray], bits: int, repeats: int) -> list[dict]:
    """Every coder on the streams, on one thread as the peers: ratio, MB/s, and speed relative to
    plain zstd -3. The first repeat checks that every stream comes back exactly."""
    with codec_threads(1):
        return _measure(streams, bits, repeats)


def _measure(streams: list[np.ndarray], bits: int, repeats: int) -> list[dict]:
    raw = sum(s.size for s in streams) * bits / 8
    runs = coders(bits)
    sizes = dict.fromkeys(runs, 0)
    enc_t, dec_t = ({name: [0.0] * repeats for name in runs} for _ in range(2))
    # each stream by every coder in turn: on this shared machine a coder's speed swings 2x within
    # seconds, and turns this short let every coder meet the same spells
    for rep in range(repeats):
        for s in streams:
            for name, (encode, decode) in runs.items():
                if rep and "e9" in name:
                    continue
                blob, t = _timed(encode, s)
                back, u = _timed(decode, blob, s)
                if rep == 0:
                    _check(name, back, s, bits)
                    sizes[name] += len(blob)
                enc_t[name][rep] += t
                dec_t[name][rep] += u
    rows = []
    for name in runs:
        done = slice(0, 1 if "e9" in name else repeats)
        rows.append({"codec": name, "ratio": raw / sizes[name],
                     "encode_MBps": raw / 1e6 / statistics.median(enc_t[name][done]),
                     "decode_MBps": raw / 1e6 / statistics.median(dec_t[name][done])})
    zstd = next(r for r in rows if r["codec"] == "zstd -3")
    for r in rows:
        r["encode_vs_zstd3"] = r["encode_MBps"] / zstd["encode_MBps"]
        r["decode_vs_zstd3"] = r["decode_MBps"] / zstd["decode_MBps"]
    return rows


def _check(name: str, back, s: np.ndarray, bits: int) -> None:
    """That the coder gave the stream back exactly (the image coders its tiled image)."""
    want = tiled(s, bits) if name.startswith(("JPEG", "WebP")) else s
    if not np.array_equal(np.asarray(back).reshape(-1), want.reshape(-1)):
        raise SystemExit(f"{name} did not round-trip a {bits}-bit stream")


def untiled(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The stream `like` back from its `tiled` image (values offset back for signed streams)."""
    if like.ndim != 4:
        flat = image.reshape(-1)[:like.size]
    else:
        h, w = like.shape[-2:]
        rows, cols = image.shape[0] // h, image.shape[1] // w
        flat = image.reshape(rows, h, cols, w).transpose(0, 2, 1, 3).reshape(-1)[:like.size]
    offset = np.iinfo(like.dtype).min if like.dtype.kind == "i" else 0
    return (flat.astype(np.int64) + offset).reshape(like.shape)


def lossy_candidates(s: np.ndarray) -> dict[str, list[tuple[int, float]]]:
    """Per peer, its (coded bytes, relative squared error) at each of its settings on stream s."""
    import imagecodecs as ic
    from actzip.codecs.layout import relative_error

    image, out = tiled(s, 8), {}
    out["JPEG-LS near-lossless"] = [(len(b), relative_error(s, untiled(ic.jpegls_decode(b), s)))
                                    for b in (ic.jpegls_encode(image, level=near) for near in NEARS)]
    jxl = [ic.jpegxl_encode(image, distance=d, effort=7, numthreads=1) for d in JXL_DISTANCES]
    out["JPEG-XL lossy e7"] = [(len(b), relative_error(s, untiled(ic.jpegxl_decode(b, numthreads=1), s))) for b in jxl]
    out["JPEG-XL lossy e7"].append((len(ic.jpegxl_encode(image, lossless=True, effort=7, numthreads=1)), 0.0))
    return out


MATCHED_ERRORS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
NEARS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32)  # JPEG-LS near-lossless settings tried
JXL_DISTANCES = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0)


DCTCM_CODERS = {"actzip dctcm": "ctxrans", "actzip dctcm coder=ctx": "ctx"}  # row name: dctcm's inner coder


def lossy(streams: list[np.ndarray], ceilings: list[float]) -> list[dict]:
    """dctcm (with each inner coder of DCTCM_CODERS) and the lossy peers at each per-stream error
    ceiling: bits per value, achieved error, and for dctcm its speed (MB/s over process CPU time,
    the settings search included in encoding)."""
    from actzip.codecs.layout import relative_error

    values = sum(s.size for s in streams)
    energy = [float(np.square(s.astype(np.float64)).sum()) for s in streams]
    peers = [lossy_candidates(s) for s in streams]
    rows = []
    for ceiling in ceilings:
        picks, speeds = {}, {}
        for name, coder in DCTCM_CODERS.items():
            dct = codecs.get("dctcm", bits=8, group=16, budget=ceiling, coder=coder)
            start = time.process_time()
            blobs = [dct.encode(s) for s in streams]
            middle = time.process_time()
            decoded = [dct.decode(b) for b in blobs]
            speeds[name] = {"encode_MBps": values / 1e6 / (middle - start),
                            "decode_MBps": values / 1e6 / (time.process_time() - middle)}
            picks[name] = [(len(b), relative_error(s, y)) for b, s, y in zip(blobs, streams, decoded)]
        for i, by_peer in enumerate(peers):
            for name, options in by_peer.items():
                fits = [o for o in options if o[1] <= ceiling] or [min(options, key=lambda o: o[1])]
                picks.setdefault(name, []).append(min(fits))
        for name, chosen in picks.items():
            rows.append({"ceiling": ceiling, "codec": name, "bits_per_value": 8 * sum(c[0] for c in chosen) / values,
                         "error": sum(c[1] * e for c, e in zip(chosen, energy)) / sum(energy)} | speeds.get(name, {}))
        print("lossy", ceiling, [(r["codec"], round(r["bits_per_value"], 3)) for r in rows[-len(picks):]], flush=True)
    return rows


def scaling(streams: list[np.ndarray], bits: int, rounds: int) -> list[dict]:
    """ctxrans's wall-clock encode and decode speed (MB/s) with 1 and 2 codec threads, the two
    settings timed in turns, rounds times, median: how its chunks spread over the cores."""
    c = codecs.get("ctxrans")
    blobs = [c.encode(s) for s in streams]
    values = sum(s.size for s in streams)
    times = {(n, step): [] for n in (1, 2) for step in ("encode", "decode")}
    for _ in range(rounds):
        for n in (1, 2):
            with codec_threads(n):
                start = time.perf_counter()
                for s in streams:
                    c.encode(s)
                middle = time.perf_counter()
                for b in blobs:
                    c.decode(b)
            times[n, "encode"].append(middle - start)
            times[n, "decode"].append(time.perf_counter() - middle)
    megabytes = values * bits / 8 / 1e6
    return [{"bits": bits, "threads": n, "step": step, "MBps": megabytes / statistics.median(t),
             "spread": [megabytes / max(t), megabytes / min(t)]} for (n, step), t in times.items()]


def scaling_table(rows: list[dict]) -> str:
    parts = ["\n## ctxrans on 1 and 2 cores, held-out photos\n\nWall-clock MB/s of raw data (median of interleaved "
             "rounds, range in brackets) with `codecs.set_threads(n)`.\n\n| bits | step | 1 thread | 2 threads | "
             "speed-up |\n| ---: | --- | ---: | ---: | ---: |\n"]
    for bits in sorted({r["bits"] for r in rows}):
        for step in ("encode", "decode"):
            one, two = (next(r for r in rows if (r["bits"], r["threads"], r["step"]) == (bits, n, step)) for n in (1, 2))
            cell = [f"{r['MBps']:.0f} ({r['spread'][0]:.0f}-{r['spread'][1]:.0f})" for r in (one, two)]
            parts.append(f"| {bits} | {step} | {cell[0]} | {cell[1]} | {two['MBps'] / one['MBps']:.2f}x |\n")
    return "".join(parts)


def rate_at(rows: list[dict], codec: str, error: float) -> float | None:
    """The codec's bits per value at exactly `error`, interpolated log-log between its two nearest
    measured points; None outside them."""
    points = sorted((r["error"], r["bits_per_value"]) for r in rows if r["codec"] == codec and r["error"] > 0)
    for (e0, b0), (e1, b1) in zip(points, points[1:]):
        if e0 <= error <= e1 and e1 > e0:
            t = (math.log(error) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
    return None


def best_blosc2(rows: list[dict]) -> list[dict]:
    """The rows with blosc2's shuffles reduced to the one of best ratio."""
    blosc = [r for r in rows if r["codec"].startswith("blosc2")]
    keep = max(blosc, key=lambda r: r["ratio"]) if blosc else None
    return [r for r in rows if not r["codec"].startswith("blosc2") or r is keep]


def table(d: dict) -> str:
    parts = [f"`{d['command']}` on {d['machine']}; speed columns: MB/s of raw b-bit data over the process's "
             "CPU time, every coder on one thread, and, in brackets, as a ratio of plain zstd -3's speed.\n"]
    for photos, by_bits in d["sets"].items():
        for bits, info in by_bits.items():
            parts.append(f"\n## {photos}, {bits}-bit maps\n\n{info['values']:,} values in {info['streams']} "
                         f"streams.\n\n| codec | ratio | encode MB/s | decode MB/s |\n| --- | ---: | ---: | ---: |\n")
            for r in sorted(best_blosc2(info["codecs"]), key=lambda r: -r["ratio"]):
                parts.append(f"| {r['codec']} | {r['ratio']:.3f}x | {r['encode_MBps']:.1f} "
                             f"({r['encode_vs_zstd3']:.3f}) | {r['decode_MBps']:.1f} ({r['decode_vs_zstd3']:.3f}) |\n")
    if d.get("scaling"):
        parts.append(scaling_table(d["scaling"]))
    if d.get("lossy"):
        parts.append(lossy_tables(d["lossy"]))
    return "".join(parts)


def lossy_tables(rows: list[dict]) -> str:
    """The lossy section: rates at each ceiling against dctcm's (ctxrans), then each peer's rate as a
    ratio of each dctcm variant's at exactly the same error."""
    ours = [name for name in DCTCM_CODERS if any(r["codec"] == name for r in rows)]
    parts = ["\n## Lossy, 8-bit maps of the held-out photos\n\nBits per value at each per-stream error ceiling "
             "(achieved aggregate relative squared error), as a ratio of dctcm's rate (its default coder, "
             "ctxrans), and dctcm's speed in MB/s over process CPU time (encoding includes its settings "
             "search).\n\n| ceiling | codec | bits/value | error | rate / dctcm's | encode MB/s | decode MB/s |\n"
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n"]
    dct = {r["ceiling"]: r["bits_per_value"] for r in rows if r["codec"] == ours[0]}
    for r in rows:
        speed = (f"{r['encode_MBps']:.1f} | {r['decode_MBps']:.1f}" if "encode_MBps" in r else "| ").strip()
        parts.append(f"| {r['ceiling']:g} | {r['codec']} | {r['bits_per_value']:.3f} | {r['error']:.2e} | "
                     f"{r['bits_per_value'] / dct[r['ceiling']]:.3f} | {speed} |\n")
    peers = sorted({r["codec"] for r in rows} - set(ours))
    for name in ours:
        parts.append(f"\nAt exactly the same aggregate error (each coder's rate interpolated log-log between its "
                     f"measured points): a peer's rate as a ratio of {name}'s.\n\n| error | " + " | ".join(peers)
                     + " |\n| ---: |" + " ---: |" * len(peers) + "\n")
        for error in MATCHED_ERRORS:
            mine = rate_at(rows, name, error)
            cells = [rate_at(rows, p, error) for p in peers]
            parts.append(f"| {error:g} | " + " | ".join(f"{c / mine:.3f}" if c and mine else "-" for c in cells) + " |\n")
    return "".join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6, help="photos of each set (the held-out set has 6)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ceilings", nargs="+", type=float, default=[5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2])
    ap.add_argument("--table", action="store_true", help="only write docs/results/codec_peers.md from the JSON")
    ap.add_argument("--lossy-only", action="store_true", help="measure the lossy part again into the JSON")
    ap.add_argument("--scaling-only", action="store_true", help="measure ctxrans on 1 and 2 cores again into the JSON")
    args = ap.parse_args()
    out = HERE / "codec_peers.json"
    command = (f"python benchmarks/codec_peers.py --images {args.images} --repeats {args.repeats} --ceilings "
               + " ".join(f"{c:g}" for c in args.ceilings))
    if args.lossy_only:
        data = json.loads(out.read_text())
        data["lossy"] = lossy(lite0_streams(args.images, 8, photos=held_out_photos()), args.ceilings)
        data["command"] = command
        out.write_text(json.dumps(data, indent=1))
    elif args.scaling_only:
        data = json.loads(out.read_text())
        data["scaling"] = [r for bits in (8, 16) for r in
                           scaling(lite0_streams(args.images, bits, photos=held_out_photos()), bits, 2 * args.repeats + 1)]
        out.write_text(json.dumps(data, indent=1))
    elif not args.table:
        sets = {}
        for photos, source in (("bundled photos", None), ("held-out photos", held_out_photos())):
            sets[photos] = {}
            for bits in (8, 16):
                streams = lite0_streams(args.images, bits, photos=source)
                sets[photos][str(bits)] = {"values": sum(s.size for s in streams), "streams": len(streams),
                                           "codecs": measure(streams, bits, args.repeats)}
                print(photos, bits, [(r["codec"], round(r["ratio"], 3)) for r in sets[photos][str(bits)]["codecs"]],
                      flush=True)
        held_out = {bits: lite0_streams(args.images, bits, photos=held_out_photos()) for bits in (8, 16)}
        spread = [r for bits, streams in held_out.items() for r in scaling(streams, bits, 2 * args.repeats + 1)]
        rows = lossy(held_out[8], args.ceilings) if image_peers(8) else []
        out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "repeats": args.repeats,
                                   "command": command, "sets": sets, "scaling": spread, "lossy": rows}, indent=1))
    from pages import write_page

    print("wrote", write_page("codec_peers"))


if __name__ == "__main__":
    main()
