"""BN-Inception (Ioffe & Szegedy 2015), the paper's Table 1 backbone, from Cadene's
pretrainedmodels. Its ImageNet weights expect BGR input on a 0-255 scale with mean subtraction."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import REGISTRY
from ._base import Backbone, load_imagenet_state_dict, load_into, load_state_dict_file


class BNInceptionFeatures(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.features(images)


@REGISTRY.register("bninception")
def bninception(pretrained: bool, pretrained_path: Optional[str] = None) -> Backbone:
    import pretrainedmodels  # only this backbone needs the package

    settings = pretrainedmodels.pretrained_settings["bninception"]["imagenet"]
    network = pretrainedmodels.bninception(pretrained=None)
    if pretrained_path:
        load_into(network, load_state_dict_file(pretrained_path, "bninception"), pretrained_path,
                  "bninception")
    elif pretrained:
        load_into(network, load_imagenet_state_dict(settings["url"], "bninception"),
                  settings["url"], "bninception")
    return Backbone(features=BNInceptionFeatures(network), feature_dim=1024,
                    mean=PUBLISHED_BGR_255_MEAN, std=PUBLISHED_BGR_255_STD, bgr_255=True)


# The published DAS code normalizes 0-1 RGB input with mean (0.502, 0.4588, 0.4078) and std
# 0.0039, then flips to BGR: on the BGR 0-255 scale that is the mean below and std 0.0039 x 255,
# i.e. pretrainedmodels' mean subtraction (std 1) with the input scaled by 1/0.9945
# (docs/PARITY.md).
PUBLISHED_BGR_255_MEAN = (0.4078 * 255, 0.4588 * 255, 0.502 * 255)
PUBLISHED_BGR_255_STD = (0.0039 * 255,) * 3
