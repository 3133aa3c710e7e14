"""Ready models: `load(name)` and `names()`.

Names are a registered model ("efficientnet-lite0", "resnet20", "resnet18", "mobilenet-v1"),
"torchvision/<arch>" when torchvision is installed, or a user factory "package.module:factory".
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from ..data.preprocess import IMAGENET, Preprocess
from ..errors import ActzipError, MissingDataError
from . import efficientnet_lite, small, tv, user  # noqa: F401  (registers the families)
from .registry import ModelEntry, entries

TORCHVISION_PREFIX = "torchvision/"


def names(include_torchvision: bool = True) -> list[str]:
    found = sorted(entries())
    if include_torchvision:
        found += [TORCHVISION_PREFIX + a for a in tv.names()]
    return found


def _entry(name: str) -> ModelEntry:
    try:
        return entries()[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(entries()), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(entries()))}"
        raise ActzipError(f"unknown model {name!r}{hint} (or torchvision/<arch>, or package.module:factory)") from None


def preprocessing(name: str) -> Preprocess:
    """The input preprocessing a model expects (ImageNet's for torchvision and custom models)."""
    if name.startswith(TORCHVISION_PREFIX) or ":" in name:
        return IMAGENET
    return _entry(name).preprocess


def load(name: str, pretrained: bool | None = None, weights: str | Path | None = None, **kwargs) -> nn.Module:
    """Build model `name` in eval mode.

    pretrained: None uses shipped weights where the registry has them; True insists on them.
    weights: a state-dict file (torch.load with weights_only=True) loaded over the model.
    """
    if name.startswith(TORCHVISION_PREFIX):
        model = tv.build(name[len(TORCHVISION_PREFIX):], bool(pretrained), **kwargs)
    elif ":" in name:
        model = user.build(name, **kwargs)
    else:
        entry = _entry(name)
        if pretrained and not entry.has_weights:
            raise MissingDataError(f"{name} ships no weights: train it with `actzip train` and pass --weights FILE")
        use_weights = entry.has_weights if pretrained is None else pretrained
        model = entry.build(pretrained=use_weights and weights is None, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def has_trained_weights(name: str, weights: str | Path | None = None) -> bool:
    """Whether `load(name, weights=weights)` gives trained weights: a weights file, a registered
    model that ships weights, or a user's own factory (taken to build its weights); not a
    torchvision model (no download here) nor a registered model without weights."""
    if weights is not None or (":" in name and not name.startswith(TORCHVISION_PREFIX)):
        return True
    if name.startswith(TORCHVISION_PREFIX):
        return False
    return _entry(name).has_weights


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (or a checkpoint dict holding one under "model") into `model`, strictly."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ActzipError(f"cannot read weights from {path}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ActzipError(f"{path} holds no state dict")
    from ..sparsify.pixelmask import restore_pixel_masks

    try:
        restore_pixel_masks(model, state)  # a model trained with pixel masks runs with them
    except ValueError as e:
        raise ActzipError(f"weights in {path} do not fit {type(model).__name__}: {e}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
        raise ActzipError(f"weights in {path} do not fit {type(model).__name__}: " + ", ".join(p for p in parts if p))
    model.load_state_dict(state)


__all__ = ["load", "load_weights", "names", "preprocessing"]
