"""Inference that cashes semi-structured sparsity in: BatchNorm folding, fused convs that compute
only their kept output pixels, and `compile`, which picks the faster path per conv by measuring."""

from .compile import CompiledModel, LayerChoice, compile
from .conv import CompiledConv2d
from .fold import MaskedConv2d, fold_batchnorm
from .saved import load, save

__all__ = ["CompiledConv2d", "CompiledModel", "LayerChoice", "MaskedConv2d", "compile", "fold_batchnorm", "load",
           "save"]
