"""Max pooling on channels_last maps by the compiled kernel.

PyTorch's channels_last max pooling on CPU computes the indices of the maxima as well, even for
inference: for ResNet's 3x3 stride-2 pool over 8 x 64 x 112 x 112 it took 5 ms here, 4 % of the whole
network, where the kernel's loads alone need about 1 ms.
"""

from __future__ import annotations

import torch
from torch import nn

from . import native


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class CompiledMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that runs the compiled kernel where it can (channels_last float32 input, no
    dilation, no ceil mode, no indices) and PyTorch's elsewhere; the same arguments and results."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (native.available() and self.fits(x)):
            return super().forward(x)
        return native.max_pool(x, _pair(self.kernel_size), _pair(self.stride or self.kernel_size), _pair(self.padding))

    def fits(self, x: torch.Tensor) -> bool:
        return (x.dim() == 4 and x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
                and _pair(self.dilation) == (1, 1) and not self.ceil_mode and not self.return_indices)
