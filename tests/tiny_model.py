"""A model small enough to test the machinery around training in seconds, not minutes.

Crash recovery, checkpoints, locks and refusals do not depend on the architecture, but
they do depend on what a model has: batch norm (running statistics, a buffer), dropout
(randomness to restore on resume) and a head named ``fc``. This one has all three and
trains an epoch of 40 images in a fraction of resnet18's time. It is registered only in
test processes (``register``), never in the package.
"""

import time

import torch.nn as nn

from archbench.models.registry import MODELS, ModelSpec

NAME = "tiny"


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


SPEC = ModelSpec(NAME, Tiny, "8/16-channel CNN with batch norm and dropout (tests only)")


def register() -> None:
    MODELS.setdefault(NAME, SPEC)


class TinyTwin(nn.Module):
    """A stem and one 3x3 conv-BN block, with (resnet) or without (plain) its identity
    shortcut: a resnet/plain pair small enough to put through the landscape and H3 in seconds."""

    def __init__(self, num_classes: int = 10, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4)
        )
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        out = self.block(x)
        x = (out + x if self.residual else out).relu()
        return self.fc(self.pool(x).flatten(1))


TWINS = {
    "resnettiny": ModelSpec(
        "resnettiny", lambda num_classes=10: TinyTwin(num_classes, True), "tiny net with a shortcut (tests only)"
    ),
    "plaintiny": ModelSpec(
        "plaintiny", lambda num_classes=10: TinyTwin(num_classes, False), "resnettiny without it (tests only)"
    ),
}


class SlowTiny(Tiny):
    """``Tiny`` that sleeps in every training step: slow enough to be interrupted mid-run on
    purpose, with numbers identical to an unhurried copy of itself."""

    STEP_SECONDS = 0.05

    def forward(self, x):
        if self.training:
            time.sleep(self.STEP_SECONDS)
        return super().forward(x)


SLOW = ModelSpec("slowtiny", SlowTiny, "Tiny with a pause in each training step (tests only)")


def register_all() -> None:
    """Every test model, in a process that did not import the tests (a Ray worker)."""
    for spec in (SPEC, SLOW, *TWINS.values()):
        MODELS.setdefault(spec.name, spec)
