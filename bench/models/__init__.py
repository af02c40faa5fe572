"""Model construction: any timm model by name, plus the CIFAR ResNets registered in ``cifar_resnet``."""

from . import cifar_resnet  # noqa: F401  (registers resnet*_cifar / resnet34_wb with timm)
from .factory import ModelError, build_model, classifier, feature_dim

__all__ = ['build_model', 'ModelError', 'feature_dim', 'classifier', 'cifar_resnet']
