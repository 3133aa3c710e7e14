"""Coded sizes that follow exactly from a histogram of quantized codes.

These are the codecs of the foundation: `zvc` (zero-value compression) and `entropy` (the order-0
empirical entropy, the bound no memoryless coder beats). The codec suite adds coders that produce
real bitstreams; both kinds fill the same table.
"""

from __future__ import annotations

import numpy as np

from .stats import CodeHistogram


def zvc_bits(h: CodeHistogram) -> int:
    """One bit per value for the zero map, plus every non-zero value at the full bit width."""
    nonzero = h.numel - int(h.counts[h.zero_index])
    return h.numel + nonzero * h.params.bits


def entropy_bits(h: CodeHistogram) -> float:
    """numel * H, H the order-0 entropy (bits per value) of the code distribution."""
    counts = h.counts[h.counts > 0].astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(-(counts * np.log2(counts / total)).sum())


HISTOGRAM_CODECS = {"zvc": zvc_bits, "entropy": entropy_bits}
