"""Gradient flow: per-layer gradient and weight L2 norms, a few times per epoch, without host syncs.

The weights of every conv and linear layer are tracked, input to output. Norms are
computed on the device right after a step (fused ``_foreach_norm``s), kept there,
and copied to the host once per epoch. Saved per run as ``gradflow.csv``: columns
``epoch``, ``t`` (position in epochs, e.g. 2.25 = a quarter into epoch 3), then
``grad:<layer>`` for every layer, then ``weight:<layer>``. The weight norms matter
because batch norm makes a layer's output blind to its weights' scale, so ‖g‖ alone
shrinks as ‖w‖ grows; ‖g‖/‖w‖ is the relative update size that compares across layers.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_text, read_text
from archbench.schema import Fields, integer, number, parse_cell

FILE_NAME = "gradflow.csv"
FIX = "delete it and resume the run to rewrite it from the checkpoint"


def tracked_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(f"{name}.weight", m.weight) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def current_rows(rows: list[list[float]], model: nn.Module) -> list[list[float]]:
    """The rows of a checkpoint that have this layout's width; rows written by an older
    archbench (gradient norms only) cannot be completed and are dropped."""
    width = 2 + len(columns(model))
    return [r for r in rows if len(r) == width]


def columns(model: nn.Module) -> list[str]:
    """gradflow.csv's columns after ``epoch`` and ``t``."""
    names = [n for n, _ in tracked_layers(model)]
    return [f"grad:{n}" for n in names] + [f"weight:{n}" for n in names]


class GradFlow:
    def __init__(self, model: nn.Module, steps_per_epoch: int, per_epoch: int):
        self.layers = tracked_layers(model)
        self.names = columns(model)
        self.params = [p for _, p in self.layers]
        self.steps_per_epoch = steps_per_epoch
        self.every = max(1, steps_per_epoch // per_epoch) if per_epoch > 0 else 0
        self._norms: list[torch.Tensor] = []
        self._steps: list[int] = []

    def after_step(self, step: int, grads_of) -> None:
        """Called after training step ``step`` (0-based) of an epoch; ``grads_of(params)`` gives its grads."""
        if self.every and step % self.every == self.every - 1:
            norms = torch._foreach_norm(grads_of(self.params)) + torch._foreach_norm(self.params)
            self._norms.append(torch.stack(norms).float())
            self._steps.append(step)

    def take(self, epoch: int) -> list[list[float]]:
        """This epoch's rows (``epoch`` 1-based), moving the norms to the host once."""
        if not self._norms:
            return []
        norms = torch.stack(self._norms).cpu().tolist()
        rows = [[epoch, round(epoch - 1 + (s + 1) / self.steps_per_epoch, 6), *n] for s, n in zip(self._steps, norms)]
        self._norms, self._steps = [], []
        return rows


def sync(run_dir: Path, names: list[str], rows: list[list[float]]) -> None:
    """Make ``gradflow.csv`` hold exactly ``rows`` (those kept in the checkpoint); no-op if it does."""
    path = Path(run_dir) / FILE_NAME
    if not rows:
        path.unlink(missing_ok=True)  # e.g. rows of an older layout that the checkpoint no longer keeps
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["epoch", "t", *names])
    w.writerows(rows)
    try:
        if path.read_text(encoding="utf-8") == buf.getvalue():
            return
    except (OSError, UnicodeDecodeError):
        pass  # unreadable or damaged: rewritten from the checkpoint's rows
    atomic_write_text(path, buf.getvalue())


@dataclass(frozen=True)
class Flow:
    layers: list[str]  # input to output
    t: np.ndarray  # (T,) position in epochs
    grad: np.ndarray  # (T, layers) gradient L2 norms
    weight: np.ndarray  # (T, layers) weight L2 norms at the same steps

    def relative(self) -> np.ndarray:
        """‖g‖/‖w‖ per record and layer."""
        return self.grad / np.maximum(self.weight, np.finfo(float).tiny)


def _header(path: Path, head: list[str]) -> list[str]:
    """The layers named by gradflow.csv's header: epoch, t, grad:<layer>..., weight:<layer>..."""
    layers = [c[len("grad:") :] for c in head[2:] if c.startswith("grad:")]
    if not layers or head != ["epoch", "t", *(f"grad:{n}" for n in layers), *(f"weight:{n}" for n in layers)]:
        raise ArchbenchError(
            f"{path}: unexpected columns (expected epoch, t, grad:<layer>... weight:<layer>...); {FIX}"
        )
    return layers


def read(run_dir: Path) -> Flow | None:
    """A run's checked gradflow.csv, or None when the run recorded none.

    Every row is a finished epoch's (``t`` within it, rising), with finite norms: a
    non-finite loss stops the run before its epoch's rows are kept.
    """
    path = Path(run_dir) / FILE_NAME
    if not os.path.lexists(path):
        return None
    try:
        rows = list(csv.reader(io.StringIO(read_text(path, "the run's gradient-flow record", FIX))))
    except csv.Error as e:
        raise ArchbenchError(f"{path}: not CSV ({e}); {FIX}") from e
    if len(rows) < 2:  # archbench removes the file rather than leave it without rows
        raise ArchbenchError(f"{path}: no rows; {FIX}")
    layers = _header(path, rows[0])
    k, values, last_t = len(layers), [], 0.0
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 2 + 2 * k:
            raise ArchbenchError(f"{path} line {n}: rows do not match its {2 + 2 * k} columns; {FIX}")
        cells = Fields(dict(zip(rows[0], map(parse_cell, row))), f"{path} line {n}", FIX, noun="column")
        epoch, t = cells.get("epoch", integer(1)), cells.get("t", number(0))
        cells.require(
            epoch - 1 < t <= epoch and t > last_t,
            f"t={t} is not a later point within epoch {epoch} (rows follow training; t is in (epoch - 1, epoch])",
        )
        values.append([t] + [cells.get(c, number(0)) for c in rows[0][2:]])
        last_t = t
    arr = np.array(values, dtype=float)
    return Flow(layers, arr[:, 0], arr[:, 1 : 1 + k], arr[:, 1 + k :])
