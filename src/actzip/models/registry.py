"""A name -> model registry in the style of timm: each family registers its models in its own file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..data.preprocess import Preprocess


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]  # build(pretrained: bool, **kwargs) -> nn.Module
    preprocess: Preprocess
    has_weights: bool
    description: str


_ENTRIES: dict[str, ModelEntry] = {}


def register(name: str, preprocess: Preprocess, description: str, has_weights: bool = False):
    def deco(build):
        _ENTRIES[name] = ModelEntry(name, build, preprocess, has_weights, description)
        return build

    return deco


def entries() -> dict[str, ModelEntry]:
    return dict(_ENTRIES)
