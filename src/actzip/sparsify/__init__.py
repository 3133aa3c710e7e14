"""Training-time activation sparsity (Georgiadis 2019, stage 1): penalties that push activation maps
to exact zeros, and FATReLU thresholds that force small activations to zero.

Each is a small dataclass config and one function that applies it to any nn.Module at its activation
sites (`actzip.sites`), returning a handle that detaches it:

    handle = attach_penalty(model, L1(alpha=1e-4))
    loss = criterion(model(x), y) + handle.take()   # the penalty of this forward; nothing is kept
    handle.detach()
"""

from .fatrelu import FATReLU, FATReLUHandle, attach_fatrelu, calibrate_thresholds
from .penalty import L1, Hoyer, PenaltyHandle, attach_penalty

__all__ = ["FATReLU", "FATReLUHandle", "Hoyer", "L1", "PenaltyHandle", "attach_fatrelu", "attach_penalty",
           "calibrate_thresholds"]
