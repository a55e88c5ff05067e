"""archbench: one identical CIFAR-10 training protocol for comparing architectures."""

__version__ = "0.1.0"
