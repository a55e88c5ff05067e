"""A model small enough to test the machinery around training in seconds, not minutes.

Crash recovery, checkpoints, locks and refusals do not depend on the architecture, but
they do depend on what a model has: batch norm (running statistics, a buffer), dropout
(randomness to restore on resume) and a head named ``fc``. This one has all three and
trains an epoch of 40 images in a fraction of resnet18's time. It is registered only in
test processes (``register``), never in the package.
"""

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
