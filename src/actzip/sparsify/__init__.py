"""Training-time activation sparsity: penalties that push activation maps to exact zeros and FATReLU
thresholds that force small activations to zero (Georgiadis 2019, stage 1), and static spatial
pixel masks on conv outputs (Grimaldi et al. 2023).

Each is a small dataclass config and one function that applies it to any nn.Module at its activation
sites (`actzip.sites`), returning a handle that detaches it:

    handle = attach_penalty(model, L1(alpha=1e-4))
    loss = criterion(model(x), y) + handle.take()   # the penalty of this forward; nothing is kept
    handle.detach()
"""

from .fatrelu import FATReLU, FATReLUHandle, attach_fatrelu, calibrate_thresholds
from .penalty import L1, Hoyer, PenaltyHandle, attach_penalty
from .pixelmask import PixelMask, PixelMaskHandle, attach_pixel_masks, restore_pixel_masks

__all__ = ["FATReLU", "FATReLUHandle", "Hoyer", "L1", "PenaltyHandle", "PixelMask", "PixelMaskHandle",
           "attach_fatrelu", "attach_penalty", "attach_pixel_masks", "calibrate_thresholds", "restore_pixel_masks"]
