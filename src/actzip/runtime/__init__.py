"""Inference that cashes semi-structured sparsity in: BatchNorm folding and masked convolutions."""

from .fold import MaskedConv2d, fold_batchnorm

__all__ = ["MaskedConv2d", "fold_batchnorm"]
