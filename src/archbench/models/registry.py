"""Name -> constructor registry. Each model module registers its factories here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn


@dataclass(frozen=True)
class Source:
    """Where a model's definition came from, as recorded in its run folder (``model.json``)."""

    kind: str  # "builtin" | "entry-point" | "module" | "file" | "timm"
    spec: str  # what resolves it again: a name, module:factory, /abs/file.py:factory or timm:<name>
    file: str | None = None  # the file that defines the factory, when there is one
    sha256: str | None = None  # that file's SHA-256: a changed definition changes it
    package: str | None = None  # the installed distribution (entry points, timm) and its version

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "spec": self.spec, "file": self.file, "sha256": self.sha256, "package": self.package}


BUILTIN = Source("builtin", "")
DEFAULT_LR = 0.1  # a model's initial learning rate unless it declares its own (the study's, for SGD)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # label in tables and the run folder's name
    build: Callable[..., nn.Module]  # build(num_classes=N) -> fresh, initialised model
    description: str
    default_lr: float = DEFAULT_LR
    plain_twin_of: str | None = None  # the residual model this one is the shortcut-free twin of
    source: Source = field(default=BUILTIN)


MODELS: dict[str, ModelSpec] = {}


def register(name: str, description: str, default_lr: float = DEFAULT_LR, plain_twin_of: str | None = None):
    """Decorator: add a factory ``f(num_classes=10) -> nn.Module`` to the registry."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = ModelSpec(name, factory, description, default_lr, plain_twin_of, Source("builtin", name))
        return factory

    return wrap


def describe(description: str | None = None, default_lr: float | None = None, plain_twin_of: str | None = None):
    """Decorator for a factory outside the package: the metadata archbench reads from it.

    ``description`` (default: the docstring's first line), ``default_lr`` (default ``DEFAULT_LR``) and
    ``plain_twin_of`` (the residual model this one is the shortcut-free twin of, for the verdicts).
    Setting the same attributes by hand works as well, without importing archbench.
    """

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for key, value in (("description", description), ("default_lr", default_lr), ("plain_twin_of", plain_twin_of)):
            if value is not None:
                setattr(factory, key, value)
        return factory

    return wrap


def create_model(name: str, num_classes: int = 10, spec: str | None = None) -> nn.Module:
    """A fresh model: ``name`` registered (or from an entry point), or ``spec`` resolved."""
    from archbench.models.specs import resolve

    return resolve(name, spec).build(num_classes=num_classes)


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
