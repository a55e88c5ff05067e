"""Name -> constructor registry. Each model module registers its factories here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[int], nn.Module]  # num_classes -> fresh, initialised model
    description: str
    default_lr: float = 0.1


MODELS: dict[str, ModelSpec] = {}


def register(name: str, description: str, default_lr: float = 0.1):
    """Decorator: add a factory ``f(num_classes=10) -> nn.Module`` to the registry."""

    def wrap(factory: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = ModelSpec(name, factory, description, default_lr)
        return factory

    return wrap


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    from archbench.errors import ArchbenchError

    if name not in MODELS:
        raise ArchbenchError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return MODELS[name].build(num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
