"""Coded sizes that follow exactly from a histogram of quantized codes: the bounds a report sets
beside the real streams of the codec suite.

`entropy` is the order-0 empirical entropy, which no memoryless coder beats.
"""

from __future__ import annotations

import numpy as np

from .stats import CodeHistogram


def entropy_bits(h: CodeHistogram) -> float:
    """numel * H, H the order-0 entropy (bits per value) of the code distribution."""
    counts = h.counts[h.counts > 0].astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(-(counts * np.log2(counts / total)).sum())


HISTOGRAM_BOUNDS = {"entropy": entropy_bits}
