"""Model construction: any timm model by name, plus the CIFAR ResNets registered in ``cifar_resnet``."""

from . import cifar_resnet  # noqa: F401  (registers resnet*_cifar / resnet34_wb with timm)
from .factory import ModelError, build_model

__all__ = ['build_model', 'ModelError', 'cifar_resnet']
