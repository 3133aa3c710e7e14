"""Folding BatchNorm into the conv before it, pixel masks included.

For y = BN(mask * conv(x)) (the order `actzip.sparsify.pixelmask` trains with), the folded conv
computes W' x + b' at kept pixels, with W' = W * g / s and b' = (b - mean) * g / s + beta
(g, beta the BN affine, s = sqrt(var + eps)), and writes BN(0) = beta - mean * g / s at masked
pixels: the folded BN bias without the conv bias, not zero.

The graph is found with torch.fx, so a conv is folded only when its output feeds nothing but the
BatchNorm (inference mode: running statistics).
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from ..errors import ActzipError


class MaskedConv2d(nn.Conv2d):
    """A conv with BatchNorm folded in and an optional static output pixel mask: the dense
    reference of what the sparse runtime computes."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor,
                 mask: torch.Tensor | None, masked_value: torch.Tensor | None):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)
        # EfficientNet ports pad "same" TF-style with a ZeroPad2d held by the conv itself
        static = getattr(conv, "static_padding", None)
        self.static_padding = static if isinstance(static, nn.ZeroPad2d) else None
        self.register_buffer("pixel_mask", mask.clone() if mask is not None else None)
        self.register_buffer("masked_value", masked_value.reshape(1, -1, 1, 1).clone()
                             if masked_value is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static_padding is not None:
            x = self.static_padding(x)
        out = super().forward(x)
        if self.pixel_mask is None:
            return out
        if self.pixel_mask.shape[-2:] != out.shape[-2:]:
            raise ValueError(f"pixel mask of {tuple(self.pixel_mask.shape[-2:])} does not fit the conv output "
                             f"{tuple(out.shape[-2:])}: the model was compiled for another input size")
        if torch.onnx.is_in_onnx_export():
            # the same values as a multiply-add, which onnxruntime ran 1.1-1.4x faster than Where on
            # masked ResNet18 and Lite0 at batch 1
            keep = self.pixel_mask.to(out.dtype)
            return out * keep + (1 - keep) * self.masked_value
        return torch.where(self.pixel_mask.bool(), out, self.masked_value)


def folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> MaskedConv2d:
    """conv (and the BatchNorm after it, if any) as one MaskedConv2d."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    mask = getattr(conv, "pixel_mask", None)
    masked_value = torch.zeros(conv.out_channels) if mask is not None else None
    if bn is not None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias.detach() - bn.running_mean * scale
        weight = weight * scale.reshape(-1, 1, 1, 1)
        bias = bias * scale + shift
        masked_value = shift if mask is not None else None
    return MaskedConv2d(conv, weight, bias, mask, masked_value)


def replace_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class _Tracer(fx.Tracer):
    """Keeps every Conv2d and BatchNorm2d, subclasses from other packages included, as one node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A traced copy of `model` (eval mode) in which every Conv2d becomes a MaskedConv2d, with the
    BatchNorm that follows it folded in when the conv feeds only that BatchNorm."""
    model = model.eval()
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception as e:  # tracing fails on data-dependent control flow
        raise ActzipError(f"cannot trace {type(model).__name__} with torch.fx: {str(e).splitlines()[0]}") from None
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d) \
                or isinstance(modules[node.target], MaskedConv2d):
            continue
        conv = modules[node.target]
        users = list(node.users)
        bn_node = users[0] if len(users) == 1 and users[0].op == "call_module" \
            and isinstance(modules.get(users[0].target), nn.BatchNorm2d) else None
        if bn_node is None:
            replace_module(gm, node.target, folded(conv, None))
            continue
        bn = modules[bn_node.target]
        if bn.running_mean is None or not bn.affine:
            replace_module(gm, node.target, folded(conv, None))
            continue
        replace_module(gm, node.target, folded(conv, bn))
        bn_node.replace_all_uses_with(node)
        gm.graph.erase_node(bn_node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()
