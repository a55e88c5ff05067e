"""VGG19 (config "E", Simonyan & Zisserman 2014) adapted to CIFAR-10, with and without BN.

The layer layout and initialisation are torchvision's ``vgg19_bn`` / ``vgg19`` with the
study's three changes: a freshly initialised first conv, a 1x1 adaptive average pool and
a 512 -> 4096 -> 4096 -> 10 classifier (new layers keep PyTorch's default init). The
module names match torchvision's, so state_dicts are interchangeable.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from archbench.models.registry import register

# Conv output channels; "M" is a 2x2 max-pool.
CFG_E = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def make_features(cfg: tuple, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(c_in, v, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        c_in = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, cfg: tuple, batch_norm: bool, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.features = make_features(cfg, batch_norm)
        self._init_features_like_torchvision()
        # The study swaps in a fresh first conv after torchvision's init: PyTorch default init.
        self.features[0] = nn.Conv2d(3, cfg[0], 3, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(512, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def _init_features_like_torchvision(self) -> None:
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register("vgg19_bn", "CIFAR VGG19 with BatchNorm (torchvision layout, 512-4096-4096-10 head)")
def vgg19_bn(num_classes: int = 10) -> VGG:
    return VGG(CFG_E, batch_norm=True, num_classes=num_classes)


@register("vgg19", "CIFAR VGG19 without BatchNorm (trains at lr 0.01, as in the study)", default_lr=0.01)
def vgg19(num_classes: int = 10) -> VGG:
    return VGG(CFG_E, batch_norm=False, num_classes=num_classes)
