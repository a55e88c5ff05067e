"""ResNet-18 with a squeeze-and-excitation gate (Hu et al. 2018) after every block, for archbench."""

import torch.nn as nn

from archbench.models import describe
from archbench.models.resnet import ResNet


class SqueezeExcite(nn.Module):
    """The block's output, each channel scaled by a gate computed from its global average (reduction r)."""

    def __init__(self, block: nn.Module, channels: int, r: int = 16):
        super().__init__()
        self.block = block
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // r, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // r, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        out = self.block(x)
        return out * self.gate(out)


@describe("CIFAR ResNet-18 with a squeeze-and-excitation gate after every block (r=16)")
def se_resnet18(num_classes=10):
    net = ResNet((2, 2, 2, 2), num_classes=num_classes)
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for i, block in enumerate(stage):
            stage[i] = SqueezeExcite(block, block.bn2.num_features)
    return net
