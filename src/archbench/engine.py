"""The training and evaluation passes. Plain functions returning plain dicts.

Metrics are accumulated on the device and read once at the end of a pass, so no step
waits for the host. A non-finite loss is detected from the per-step losses kept on the
device, and reported with the first offending step.
"""

from __future__ import annotations

import time
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.errors import DivergenceError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def train_one_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
                    device: torch.device) -> dict:
    """One pass of SGD over ``batches``: mean loss, accuracy (%), images, seconds."""
    model.train()
    start = time.perf_counter()
    step_losses, n = [], 0
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for x, y in batches:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss = loss.detach()
        step_losses.append(loss)
        loss_sum += loss * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        n += y.shape[0]
    if n == 0:
        raise ValueError("train_one_epoch got no batches")
    losses = torch.stack(step_losses)
    bad = torch.nonzero(~torch.isfinite(losses)).flatten()
    if bad.numel():
        step = int(bad[0]) + 1
        raise DivergenceError(f"loss became {losses[step - 1].item()} at step {step} of the epoch")
    _sync(device)
    return {"loss": loss_sum.item() / n, "acc": 100.0 * correct.item() / n, "images": n,
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, device: torch.device,
             exact: torch.Tensor | None = None) -> dict:
    """Mean loss and accuracy (%) over ``batches``, in order.

    ``exact`` (bool, one per image, in batch order) marks pixel-exact images; the
    result then also has ``loss_exact``/``acc_exact``/``images_exact`` over those.
    """
    model.eval()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum_x = torch.zeros((), device=device)
    correct_x = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for x, y in batches:
        logits = model(x)
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        hits = logits.argmax(1) == y
        loss_sum += losses.sum()
        correct += hits.sum()
        if exact is not None:
            m = exact[n:n + y.shape[0]]
            loss_sum_x += losses[m].sum()
            correct_x += hits[m].sum()
        n += y.shape[0]
    if n == 0:
        raise ValueError("evaluate got no batches")
    out = {"loss": loss_sum.item() / n, "acc": 100.0 * correct.item() / n, "images": n}
    if exact is not None:
        n_x = int(exact[:n].sum())
        out.update(loss_exact=loss_sum_x.item() / max(n_x, 1),
                   acc_exact=100.0 * correct_x.item() / max(n_x, 1), images_exact=n_x)
    _sync(device)
    out["seconds"] = time.perf_counter() - start
    return out
