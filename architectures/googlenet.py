"""GoogLeNet (Inception v1) from torchvision."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision import models

from . import REGISTRY
from ._base import Backbone, load_imagenet_state_dict, load_into, load_state_dict_file


class GoogLeNetFeatures(nn.Module):
    """GoogLeNet up to inception5b, without its classifier."""

    def __init__(self, network: models.GoogLeNet) -> None:
        super().__init__()
        self.network = network
        self.stages = nn.Sequential(
            network.conv1, network.maxpool1, network.conv2, network.conv3, network.maxpool2,
            network.inception3a, network.inception3b, network.maxpool3,
            network.inception4a, network.inception4b, network.inception4c, network.inception4d,
            network.inception4e, network.maxpool4, network.inception5a, network.inception5b)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # torchvision's ImageNet GoogLeNet was trained on inputs rescaled from ImageNet
        # normalization (transform_input); keep that convention when its weights are used.
        return self.stages(self.network._transform_input(images))


@REGISTRY.register("googlenet")
def googlenet(pretrained: bool, pretrained_path: Optional[str] = None) -> Backbone:
    weights = models.GoogLeNet_Weights.IMAGENET1K_V1
    uses_imagenet = bool(pretrained or pretrained_path)
    network = models.googlenet(weights=None, aux_logits=False, init_weights=not uses_imagenet,
                               transform_input=uses_imagenet)
    if pretrained_path:
        load_into(network, load_state_dict_file(pretrained_path, "googlenet"), pretrained_path,
                  "googlenet")
    elif pretrained:
        load_into(network, load_imagenet_state_dict(weights.url, "googlenet"), weights.url,
                  "googlenet")
    return Backbone(features=GoogLeNetFeatures(network), feature_dim=1024)
