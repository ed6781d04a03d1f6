"""ResNet-50 (the paper's ResNet backbone) and ResNet-18 (for CPU-sized runs) from torchvision."""
from __future__ import annotations

from typing import Optional

from torch import nn
from torchvision import models

from . import REGISTRY
from ._base import Backbone, load_imagenet_state_dict, load_into, load_state_dict_file


def _resnet(name: str, pretrained: bool, pretrained_path: Optional[str]) -> Backbone:
    constructor, weights = {
        "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
        "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    }[name]
    network = constructor(weights=None)
    if pretrained_path:
        load_into(network, load_state_dict_file(pretrained_path, name), pretrained_path, name)
    elif pretrained:
        load_into(network, load_imagenet_state_dict(weights.url, name), weights.url, name)
    feature_dim = network.fc.in_features
    features = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool,
                             network.layer1, network.layer2, network.layer3, network.layer4)
    return Backbone(features=features, feature_dim=feature_dim)


@REGISTRY.register("resnet50")
def resnet50(pretrained: bool, pretrained_path: Optional[str] = None) -> Backbone:
    return _resnet("resnet50", pretrained, pretrained_path)


@REGISTRY.register("resnet18")
def resnet18(pretrained: bool, pretrained_path: Optional[str] = None) -> Backbone:
    return _resnet("resnet18", pretrained, pretrained_path)
