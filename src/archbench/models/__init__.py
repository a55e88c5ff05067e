"""Model zoo: importing this package registers every model in ``MODELS``."""

from archbench.models import resnet as _resnet  # noqa: F401  (registers resnet18)
from archbench.models import vgg as _vgg  # noqa: F401  (registers vgg19_bn, vgg19)
from archbench.models.registry import (
    MODELS,
    ModelSpec,
    count_parameters,
    create_model,
    describe,
    forward_flops_per_image,
)

__all__ = ["MODELS", "ModelSpec", "count_parameters", "create_model", "describe", "forward_flops_per_image"]
