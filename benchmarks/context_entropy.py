"""What richer contexts could still give `ctxrans` on re-quantized Lite0 maps.

Per site of EfficientNet-Lite0 on the first 8 bundled photos (8-bit codes, four photos per
stream), re-quantized with the pixel-domain step `choose` finds at relative error 1e-3, the values
are cut into `ctxrans`'s symbols (zero, or bit length with the two bits below the leading one; the
rest raw). Reported: the conditional entropy of the symbols plus the raw bits under the context
`ctxrans` codes with (bit-length classes of the left and upper neighbours) and under richer ones,
and how much smaller each makes the streams. These are lower bounds: tables are not counted, and a
richer context needs more of them. Conv sites only (the classifier's input has no neighbours).

    python benchmarks/context_entropy.py [--photos 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from actzip.codecs.search import choose
from actzip.fileio import atomic_write
from lite0_maps import lite0_streams

HERE = Path(__file__).parent
BUDGET = 1e-3


def conditional_bits(symbols: np.ndarray, context: np.ndarray) -> float:
    """n * H(symbol | context), from joint and marginal counts."""
    def n_entropy(keys):
        _, counts = np.unique(keys, return_counts=True)
        return float(-(counts * np.log2(counts / keys.size)).sum())
    return n_entropy(context.astype(np.int64) * 4096 + symbols) - n_entropy(context)


def shifted(c: np.ndarray, dy: int, dx: int, axis_shift: int = 0) -> np.ndarray:
    """c moved so that each position sees its neighbour (dy rows up, dx columns left, or
    axis_shift channels back); 0 outside the plane, as for a coder that has not seen it."""
    out = np.zeros_like(c)
    n, ch, h, w = c.shape
    out[:, axis_shift:, max(dy, 0):, max(dx, 0):w + min(dx, 0)] = \
        c[:, :ch - axis_shift, :h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def context_sizes(a: np.ndarray) -> dict[str, float]:
    """Estimated bits of one stream under each context."""
    step = choose(a, 8, BUDGET, coder="ctxrans", transform=False)["step"]
    q = np.floor(a / step + 0.5).astype(np.int64)  # the codec's rounding
    u = np.where(q >= 0, 2 * q, -2 * q - 1) if a.min() < 0 else q  # zigzag, as the codec
    length = np.zeros_like(u)
    length[u > 0] = np.floor(np.log2(u[u > 0])).astype(np.int64) + 1
    symbols = np.where(u > 0, length * 8 + (u >> np.maximum(length - 3, 0)), 0).ravel()
    raw = float(np.maximum(length - 3, 0).sum())
    cls = np.minimum(length, 8)
    base = shifted(cls, 0, 1) * 9 + shifted(cls, 1, 0)
    rank = np.argsort(np.argsort(length.mean(axis=(0, 2, 3))))
    channel = np.broadcast_to(np.arange(a.shape[1])[None, :, None, None], a.shape)
    contexts = {
        "ctxrans (left, up)": base,
        "+ 4 channel classes": base * 4 + (rank * 4 // a.shape[1])[channel],
        "+ 8 channel classes": base * 8 + (rank * 8 // a.shape[1])[channel],
        "+ up-left + up-right": base * 17 + shifted(cls, 1, 1) + shifted(cls, 1, -1),
        "+ previous channel": base * 9 + shifted(cls, 0, 0, axis_shift=1),
        "+ a table per channel": base * a.shape[1] + channel,
    }
    return {name: conditional_bits(symbols, c.ravel()) + raw for name, c in contexts.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--out", type=Path, default=HERE / "context_entropy.json")
    args = ap.parse_args()
    totals: dict[str, float] = {}
    for a in (a for a in lite0_streams(args.photos, 8) if a.ndim == 4):  # conv sites
        for name, bits in context_sizes(a).items():
            totals[name] = totals.get(name, 0.0) + bits
    base = totals["ctxrans (left, up)"]
    result = {"photos": args.photos, "budget": BUDGET, "command": f"python benchmarks/context_entropy.py --photos {args.photos}",
              "contexts": {name: {"megabytes": bits / 8e6, "smaller_by": 1 - bits / base} for name, bits in totals.items()}}
    atomic_write(args.out, json.dumps(result, indent=1))
    for name, r in result["contexts"].items():
        print(f"{name:24} {r['megabytes']:8.3f} MB  {100 * r['smaller_by']:5.1f} % smaller")


if __name__ == "__main__":
    main()
