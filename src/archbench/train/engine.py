"""The training and evaluation passes. Plain functions returning plain dicts.

Metrics are accumulated on the device (a ``Tally``) and read once at the end of a
pass, so no step waits for the host. A non-finite loss is caught the same way: the
tally keeps the index of the first step whose loss was not finite.

A training step is a callable ``step(x, y, tally)``; ``TrainStep`` is the eager one
and ``archbench.train.graphs.GraphedTrainStep`` replays it from captured CUDA graphs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from archbench.errors import DivergenceError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision == "bf16"``; losses and BN statistics stay fp32."""
    if precision == "bf16":
        # No cast cache: each weight is used once per forward pass, and cached casts would
        # outlive a CUDA graph capture.
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


class Tally:
    """Per-pass sums kept on the device, updated in place (so CUDA graphs can update them)."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.images = 0  # host-side: batch sizes are known without a sync

    def tensors(self) -> list[torch.Tensor]:
        return [self.loss_sum, self.correct, self.step, self.first_bad]

    def reset(self) -> None:
        for t in (self.loss_sum, self.correct, self.step):
            t.zero_()
        self.first_bad.fill_(-1)
        self.images = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.loss_sum.add_(loss * y.shape[0])
        self.correct.add_((logits.detach().argmax(1) == y).sum())
        bad = ~torch.isfinite(loss)
        self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), self.step, self.first_bad))
        self.step.add_(1)


class TrainStep:
    """One SGD step on a batch, eagerly: forward, loss, backward, optimizer step."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        precision: str = "fp32",
        forward: Callable | None = None,
    ):
        self.model, self.optimizer, self.device, self.precision = model, optimizer, device, precision
        self.forward = model if forward is None else forward  # torch.compile(model), when asked for

    def compute(self, x: torch.Tensor, y: torch.Tensor, tally: Tally) -> None:
        """The step's work, without touching gradients' storage (graph capture reuses it)."""
        with autocast(self.device, self.precision):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        tally.add(loss, logits, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, tally: Tally) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.compute(x, y, tally)
        tally.images += y.shape[0]

    def grads_of(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The gradients the last step computed for ``params``."""
        return [p.grad for p in params]


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    step: Callable,
    device: torch.device,
    tally: Tally | None = None,
    after_step: Callable[[int], None] | None = None,
) -> dict:
    """One pass of ``step`` over ``batches``: mean loss, accuracy (%), images, seconds.

    ``after_step(i)``, if given, runs after step ``i`` (0-based), e.g. to record gradients.
    """
    model.train()
    tally = tally or Tally(device)
    tally.reset()
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        step(x, y, tally)
        if after_step is not None:
            after_step(i)
    if tally.images == 0:
        raise ValueError("train_one_epoch got no batches")
    first_bad = int(tally.first_bad)  # the pass's one host sync
    if first_bad >= 0:
        raise DivergenceError(
            f"loss became non-finite (nan or inf) at step {first_bad + 1} of the epoch", step=first_bad + 1
        )
    n = tally.images
    out = {"loss": tally.loss_sum.item() / n, "acc": 100.0 * tally.correct.item() / n, "images": n}
    sync(device)
    out["seconds"] = time.perf_counter() - start
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    device: torch.device,
    exact: torch.Tensor | None = None,
    precision: str = "fp32",
    keep_outputs: bool = False,
) -> dict:
    """Mean loss and accuracy (%) over ``batches``, in order, with one host sync at the end.

    ``exact`` (bool, one per image, in batch order) marks pixel-exact images; the
    result then also has ``loss_exact``/``acc_exact``/``images_exact`` over those.
    ``keep_outputs`` adds ``outputs``: per-image ``logits`` (float16), ``loss`` and
    ``pred`` tensors, on the device, in batch order.
    """
    model.eval()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum_x = torch.zeros((), device=device)
    correct_x = torch.zeros((), dtype=torch.long, device=device)
    # A logit of -inf leaves the loss finite, yet the weights have diverged all the same.
    nonfinite = torch.zeros((), dtype=torch.long, device=device)
    kept: dict[str, list[torch.Tensor]] = {"logits": [], "loss": [], "pred": []}
    n = 0
    for x, y in batches:
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        losses = F.cross_entropy(logits, y, reduction="none")
        pred = logits.argmax(1)
        hits = pred == y
        loss_sum += losses.sum()
        correct += hits.sum()
        nonfinite += (~torch.isfinite(logits)).any(1).sum()
        if exact is not None:
            # Masking by where/and keeps the pass on the device: indexing with a boolean
            # mask must first count the mask on the host, a sync per batch.
            m = exact[n : n + y.shape[0]]
            loss_sum_x += torch.where(m, losses, 0.0).sum()
            correct_x += (hits & m).sum()
        if keep_outputs:
            kept["logits"].append(logits.half())
            kept["loss"].append(losses)
            kept["pred"].append(pred)
        n += y.shape[0]
    if n == 0:
        raise ValueError("evaluate got no batches")
    out = {
        "loss": loss_sum.item() / n,
        "acc": 100.0 * correct.item() / n,
        "images": n,
        "nonfinite_logits": int(nonfinite.item()),
    }
    if exact is not None:
        n_x = int(exact[:n].sum())
        out.update(
            loss_exact=loss_sum_x.item() / max(n_x, 1),
            acc_exact=100.0 * correct_x.item() / max(n_x, 1),
            images_exact=n_x,
        )
    if keep_outputs:
        out["outputs"] = {k: torch.cat(v) for k, v in kept.items()}
    sync(device)
    out["seconds"] = time.perf_counter() - start
    return out
