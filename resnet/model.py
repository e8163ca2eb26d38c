"""The model: a torchvision ResNet with the recipe's initialisation (section 1), BlurPool (2), channels-last (3).

The ImageNet configs use torchvision's `resnet50` unchanged. `resnet_cpu` is the CPU benchmark's stand-in: the
same torchvision blocks and stages, narrowed, behind a stem for small inputs, so that the CPU crops give the
feature-map sizes ResNet-50 sees on ImageNet (see `SmallInputResNet`).
"""
import math

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import StochasticDepth

from resnet.algorithms.blurpool import apply_blurpool
from resnet.errors import SettingError
from resnet.recipe import ARCHS


class SmallInputResNet(torchvision.models.ResNet):
    """torchvision's ResNet with a stem for small inputs: a 3x3 stride-1 conv and no max-pool, so the network
    reduces its input 8x instead of 32x. A crop a quarter of ImageNet's side then gives ResNet-50's feature maps:

        input px      ResNet-50 (32x)          resnet_cpu (8x)
        88 | 22       3x3 at layer4            3x3 at layer4     (progressive resizing starts: 176 x 0.5)
        176 | 44      6x6                      6x6               (training crop)
        224 | 56      7x7                      7x7               (evaluation crop)

    The stages keep torchvision's layout (stride 2 on the first block of layer2/3/4, 1x1 strided shortcut), so
    BlurPool blurs the same six strided convs as in ResNet-50; with no max-pool there is no pool to blur.
    """

    def __init__(self, num_classes: int, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), block=BasicBlock):
        super().__init__(block, list(blocks), num_classes=num_classes)
        self.inplanes = widths[0]                  # torchvision's _make_layer builds each stage from here
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, widths[0], blocks[0])
        self.layer2 = self._make_layer(block, widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], blocks[3], stride=2)
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)


def resnet_cpu(num_classes: int) -> nn.Module:
    """The CPU benchmark's network: widths 16-32-64-128, one BasicBlock per stage (~0.3 M parameters)."""
    return SmallInputResNet(num_classes)


def initialise(model: nn.Module, num_classes: int, log_bias_init: bool) -> None:
    """Kaiming-normal (fan_in) conv and linear weights; BatchNorm weight ~ U[0, 1), bias 0; with log_bias_init
    the linear bias is -ln(num_classes) (initial sigmoid outputs ~ 1/num_classes), else torchvision's default
    (as in the Baseline the recipe was measured against)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Linear) and m.bias is not None and log_bias_init:
            nn.init.constant_(m.bias, -math.log(num_classes))


def apply_stochastic_depth(model: nn.Module, drop_rate: float) -> nn.Module:
    """Stochastic depth per sample on every residual branch of a torchvision ResNet (RECIPE section 12), in place:
    block i of L (in order, from 1) drops its branch for each sample with probability drop_rate * i / L (linear
    over depth: the last block drops at drop_rate), leaving the shortcut. torchvision's StochasticDepth("row")
    follows the branch's last BatchNorm; it scales a kept branch by 1 / keep while training and is the identity
    in eval (Composer scaled by keep in eval instead: the same network up to that factor). Returns the model."""
    blocks = [m for m in model.modules() if isinstance(m, (Bottleneck, BasicBlock))]
    for i, block in enumerate(blocks, start=1):
        last = "bn3" if isinstance(block, Bottleneck) else "bn2"
        setattr(block, last, nn.Sequential(getattr(block, last), StochasticDepth(drop_rate * i / len(blocks), "row")))
    return model


def build_model(recipe, num_classes: int) -> nn.Module:
    if recipe.arch not in ARCHS:
        raise SettingError(f"ARCH={recipe.arch}: not a network this project builds; "
                           f"choose one of {', '.join(ARCHS)}")
    # torchvision's default zero_init_residual=False, as the recipe says
    model = (resnet_cpu(num_classes) if recipe.arch == "resnet_cpu"
             else getattr(torchvision.models, recipe.arch)(num_classes=num_classes))
    initialise(model, num_classes, recipe.log_bias_init)
    if recipe.blurpool:
        apply_blurpool(model)
    if recipe.stochastic_depth_rate:
        apply_stochastic_depth(model, recipe.stochastic_depth_rate)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
