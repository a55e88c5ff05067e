"""ResNets for CIFAR-10, built by hand (He et al. 2015, CIFAR variant), and their plain twins.

3x3 stem without max-pool, four stages of BasicBlocks at 64/128/256/512 channels, the
first block of stages 2-4 downsampling by stride 2, global average pool, one linear layer.
A "plain" network is the same stack with every shortcut removed (no identity, no 1x1
projection): the same-depth control for what the shortcuts themselves contribute.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from archbench.models.registry import register


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """out = ReLU(F(x) + shortcut(x)), F = conv-BN-ReLU-conv-BN; plain: out = ReLU(F(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, residual: bool = True):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        if not residual:
            self.shortcut = None
        elif stride != 1 or c_in != c_out:
            # Projection shortcut (option B) only where the shapes change.
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is None:
            return self.relu(out)
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        blocks: tuple[int, ...],
        widths: tuple[int, ...] = (64, 128, 256, 512),
        num_classes: int = 10,
        residual: bool = True,
    ):
        super().__init__()
        self.stem = nn.Sequential(conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, c_in = [], widths[0]
        for i, (n, c_out) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(c_in, c_out, stride, residual)] + [
                BasicBlock(c_out, c_out, residual=residual) for _ in range(n - 1)
            ]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The study's init: Kaiming normal (fan_in) for convs, BN 1/0; Linear keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnet18", "CIFAR ResNet-18: 3x3 stem, BasicBlocks [2,2,2,2], identity shortcuts")
def resnet18(num_classes: int = 10) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes=num_classes)


@register("plain18", "resnet18 with every shortcut removed: the same-depth plain network", plain_twin_of="resnet18")
def plain18(num_classes: int = 10) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes=num_classes, residual=False)


@register("resnet34", "CIFAR ResNet-34: BasicBlocks [3,4,6,3], identity shortcuts")
def resnet34(num_classes: int = 10) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes=num_classes)


@register("plain34", "resnet34 with every shortcut removed: the deeper plain network", plain_twin_of="resnet34")
def plain34(num_classes: int = 10) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes=num_classes, residual=False)
