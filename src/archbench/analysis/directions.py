"""Points in weight space: filter-normalized random directions, and moving a model to a point.

Li, Xu, Taylor & Goldstein (2018), "Visualizing the Loss Landscape of Neural Nets": a raw
Gaussian direction is meaningless across networks, because batch norm makes a filter's
output blind to the filter's scale — a step of 1 moves a small filter far and a large one
hardly at all. Scaling each filter of the direction to the norm of the matching filter of
the weights makes a step mean the same relative change everywhere, so surfaces of
different networks can be drawn on one scale. A "filter" is one slice along the first
(output) dimension: a conv's output channel, a linear layer's row. Biases and batch-norm
parameters (1-D tensors) get a zero direction, as in the paper.

Only parameters move; buffers (batch-norm running statistics) keep their values, since
the loss is taken with batch norm in eval mode and should be a function of the weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Keeps a zero filter of the weights from dividing by a zero-norm random filter.
_EPS = 1e-10


def weights_of(model: nn.Module) -> list[torch.Tensor]:
    """Detached copies of the model's parameters, in ``named_parameters`` order."""
    return [p.detach().clone() for p in model.parameters()]


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the model's whole state (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def random_direction(weights: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """One filter-normalized Gaussian direction for ``weights``.

    Drawn on the CPU in float32 from ``generator``, so a seed gives the same direction on
    every device, then moved to each weight's device and dtype.
    """
    out = []
    for w in weights:
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32)
        d = d.to(device=w.device, dtype=w.dtype)
        out.append(filter_normalize(d, w) if w.dim() > 1 else torch.zeros_like(w))
    return out


def filter_normalize(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``d`` with each filter scaled to the norm of the matching filter of ``w``."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    w_norm = w.flatten(1).norm(dim=1).view(shape)
    d_norm = d.flatten(1).norm(dim=1).view(shape)
    return d * (w_norm / (d_norm + _EPS))


def directions(weights: list[torch.Tensor], count: int, seed: int) -> list[list[torch.Tensor]]:
    """``count`` directions from one seed: the same seed draws them the same way for every model."""
    generator = torch.Generator().manual_seed(seed)
    return [random_direction(weights, generator) for _ in range(count)]


@torch.no_grad()
def move_to(model: nn.Module, origin: list[torch.Tensor], steps: list[tuple[float, list[torch.Tensor]]]) -> None:
    """Set the model's parameters to ``origin + Σ coefficient · direction``."""
    for i, p in enumerate(model.parameters()):
        p.copy_(origin[i])
        for coefficient, direction in steps:
            if coefficient:
                p.add_(direction[i], alpha=coefficient)


@torch.no_grad()
def blend(model: nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> None:
    """Set the model's whole state to ``(1 − alpha) · start + alpha · end``.

    Buffers are blended too, so that at alpha = 0 and 1 the model is exactly each end's
    network (its own batch-norm statistics); integer buffers (batch counts) take the end's.
    """
    for name, value in model.state_dict().items():
        a, b = start[name], end[name]
        if value.is_floating_point():
            value.copy_(torch.lerp(a, b, alpha) if 0.0 <= alpha <= 1.0 else a + alpha * (b - a))
        else:
            value.copy_(b)
