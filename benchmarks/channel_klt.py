"""Would a learned channel transform (per-site KLT) do what the channel DCT does not?

The channel DCT buys almost nothing on these networks (benchmarks/dctcm.py): channel order is
arbitrary, so neighbouring channels are no more alike than any two. A transform fitted to the
data is the strongest linear alternative: per conv site of EfficientNet-Lite0 (8-bit codes), the
principal axes of its channels (mean removed) on the first 4 bundled photos, applied to the next
4. Against pixel-domain re-quantization at the step `choose` finds for a relative error budget,
the KLT's coefficients get the coarsest step (on a 1/16-octave grid) whose squared error is no
larger. Both are costed by the order-0 entropy of each channel (or coefficient), as if each had
its own table, so neither gets a coder advantage. Both errors are measured before the
reconstruction is rounded to codes and clamped to their range; in the loop, that clamp is what
costs the KLT (see the README). A site the step leaves exact (step 1) has no KLT point: null.

    python benchmarks/channel_klt.py [--budgets 1e-3 1e-2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from actzip.codecs.layout import channel_entropy
from actzip.codecs.search import choose
from actzip.fileio import atomic_write
from lite0_maps import lite0_streams

HERE = Path(__file__).parent
PHOTOS = 4  # per half: the basis is fitted on the first half and measured on the second


def _site_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit, test) codes of every conv site, as (channels, values) arrays of their integer type."""
    streams = lite0_streams(2 * PHOTOS, 8, group=PHOTOS)
    half = len(streams) // 2
    flat = [np.moveaxis(a, 1, 0).reshape(a.shape[1], -1) for a in streams]
    return [(f, t) for f, t, a in zip(flat[:half], flat[half:], streams) if a.ndim == 4]


def channel_bits(q: np.ndarray) -> float:
    """Bits of (channels, values) q under order-0 entropy with a table per channel."""
    return float(channel_entropy(q[None]).sum()) * q.shape[1]


def compare(fit: np.ndarray, codes: np.ndarray, budget: float) -> dict:
    """Bits of the test codes in the pixel domain and after the KLT, at no more squared error."""
    step = choose(codes[None], 8, budget, coder="ctxrans", transform=False)["step"]
    fit, test = fit.astype(np.float64), codes.astype(np.float64)
    energy = float(np.square(test).sum())
    pixel = np.floor(test / step + 0.5)
    error = float(np.square(pixel * step - test).sum())
    mean = fit.mean(axis=1, keepdims=True)
    _, basis = np.linalg.eigh(np.cov(fit - mean))
    coef = basis.T @ (test - mean)
    klt_bits, klt_error = None, None
    for k_step in step * 2.0 ** (np.arange(16, -49, -1) / 16):  # coarsest first: the first within the error wins
        q = np.floor(coef / k_step + 0.5)
        e = float(np.square(q * k_step - coef).sum())  # the basis is orthonormal: the same error as in pixels
        if e <= error:
            klt_bits, klt_error = channel_bits(q), e / energy
            break
    return {"values": test.size, "pixel_bits": channel_bits(pixel), "klt_bits": klt_bits,
            "pixel_error": error / energy, "klt_error": klt_error}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--out", type=Path, default=HERE / "channel_klt.json")
    args = ap.parse_args()
    pairs = _site_pairs()
    result = {"photos_fit": PHOTOS, "photos_measured": PHOTOS, "sites": len(pairs),
              "command": "python benchmarks/channel_klt.py --budgets " + " ".join(f"{b:g}" for b in args.budgets),
              "budgets": {}}
    for budget in args.budgets:
        rows = [compare(f, t, budget) for f, t in pairs]
        pixel = sum(r["pixel_bits"] for r in rows)
        klt_smaller = [r["klt_bits"] is not None and r["klt_bits"] < r["pixel_bits"] for r in rows]
        best = sum(r["klt_bits"] if smaller else r["pixel_bits"] for r, smaller in zip(rows, klt_smaller))
        result["budgets"][f"{budget:g}"] = {
            "pixel_megabytes": pixel / 8e6, "best_of_both_megabytes": best / 8e6,
            "smaller_by": 1 - best / pixel, "sites_klt_smaller": sum(klt_smaller),
            "sites": rows}
        print(f"budget {budget:g}: pixel {pixel / 8e6:.3f} MB, best of pixel and KLT per site {best / 8e6:.3f} MB "
              f"({100 * (1 - best / pixel):.1f} % smaller; KLT smaller at "
              f"{result['budgets'][f'{budget:g}']['sites_klt_smaller']} of {len(rows)} sites)")
    atomic_write(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
