"""Name -> constructor registry. Each model module registers its factories here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def forward_flops_per_image(model: nn.Module) -> float:
    """FLOPs of one inference forward pass on one 32x32 RGB image (torch.utils.flop_counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, 32, 32, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())
