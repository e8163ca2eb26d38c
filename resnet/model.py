"""The model: a torchvision ResNet with the recipe's initialisation (section 1), BlurPool (2), channels-last (3)."""
import math

import torch
import torchvision
from torch import nn

from resnet.algorithms.blurpool import apply_blurpool

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def initialise(model: nn.Module, num_classes: int, log_bias_init: bool) -> None:
    """Kaiming-normal (fan_in) conv and linear weights; BatchNorm weight ~ U[0, 1), bias 0;
    linear bias -ln(num_classes) with log_bias_init (initial sigmoid outputs ~ 1/num_classes), else 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.constant_(m.bias, -math.log(num_classes) if log_bias_init else 0.0)


def build_model(recipe, num_classes: int) -> nn.Module:
    if recipe.arch not in ARCHS:
        raise SystemExit(f"mlperf-resnet: error: ARCH={recipe.arch!r} is not a torchvision ResNet; "
                         f"choose one of {', '.join(ARCHS)}")
    model = getattr(torchvision.models, recipe.arch)(num_classes=num_classes, zero_init_residual=False)
    initialise(model, num_classes, recipe.log_bias_init)
    if recipe.blurpool:
        apply_blurpool(model)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
