"""The fixed images a landscape is measured on, and the model measured on them.

Loss and accuracy are taken on a class-balanced subset of the run's own training images
(the first of each class, so no seed is needed), normalised once on the device without
augmentation, with batch norm in eval mode: the loss is then a function of the weights
alone, the same at every point of a grid and on every machine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from archbench.data.datasets import DatasetInfo
from archbench.data.subsets import balanced_indices
from archbench.train.training import channels_last


class Probe:
    """``model`` (put in eval mode) and ``images`` of ``x``/``y`` (images of dataset ``ds``), batched on ``device``."""

    def __init__(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        images: int,
        device: torch.device,
        batch_size: int,
        ds: DatasetInfo,
    ):
        idx = balanced_indices(y, images, ds.num_classes, "--images")
        self.model = model.eval()
        self.images = len(idx)
        mean = torch.tensor(ds.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(ds.std, device=device).view(1, 3, 1, 1)
        xs = torch.from_numpy(np.ascontiguousarray(x[idx])).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        xs = (xs - mean) / std
        if channels_last(device):
            xs = xs.contiguous(memory_format=torch.channels_last)
        ys = torch.from_numpy(np.asarray(y[idx], dtype=np.int64)).to(device)
        self.batches = [(xs[i : i + batch_size], ys[i : i + batch_size]) for i in range(0, len(idx), batch_size)]

    @torch.no_grad()
    def measure(self) -> tuple[float, float]:
        """(mean cross-entropy, accuracy in %) of the model as it is now; one host sync."""
        loss = torch.zeros((), dtype=torch.float64, device=self.batches[0][0].device)
        correct = torch.zeros((), dtype=torch.int64, device=loss.device)
        for x, y in self.batches:
            logits = self.model(x)
            loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
        both = torch.stack([loss, correct.double()]).cpu()
        return float(both[0]) / self.images, 100.0 * float(both[1]) / self.images

    def terms(self) -> list[tuple[float, Callable[[dict[str, torch.Tensor]], torch.Tensor]]]:
        """The loss as weighted per-batch terms of the parameters, for Hessian-vector products."""
        model, n = self.model, self.images

        def term(x: torch.Tensor, y: torch.Tensor):
            return lambda params: F.cross_entropy(functional_call(model, params, (x,)), y)

        return [(len(y) / n, term(x, y)) for x, y in self.batches]
