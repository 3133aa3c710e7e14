"""torchvision architectures by name (random init: pretrained downloads are not available offline).

The PyPI torchvision build is linked against CUDA torch; on CPU torch its import fails with
"operator torchvision::nms does not exist" because its C++ ops did not load. Defining the schemas of
the two ops it registers Python fakes for lets the import go through; detection ops stay unusable,
classification models work.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..errors import ActzipError, MissingDataError

_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # kept alive: the schemas vanish when the Library object is collected


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def import_torchvision():
    """Import torchvision on CPU torch, defining the missing op schemas first if needed."""
    global _LIBRARY
    try:
        missing = [n for n in _OP_SCHEMAS if not _has_op(n)]
        if missing:
            _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
            for n in missing:
                _LIBRARY.define(_OP_SCHEMAS[n])
        import torchvision
    except ImportError:
        raise MissingDataError("torchvision is not installed: `pip install 'actzip[torchvision]'`") from None
    return torchvision


def names() -> list[str]:
    try:
        tv = import_torchvision()
    except MissingDataError:
        return []
    return sorted(tv.models.list_models(module=tv.models))


def build(arch: str, pretrained: bool = False, **kwargs) -> nn.Module:
    if pretrained:
        raise MissingDataError(f"torchvision/{arch}: pretrained weights are downloaded at run time and this "
                               "machine is offline; use --weights FILE with a state dict you have")
    tv = import_torchvision()
    if arch not in tv.models.list_models(module=tv.models):
        raise ActzipError(f"torchvision has no classification model {arch!r}")
    return tv.models.get_model(arch, weights=None, **kwargs)
