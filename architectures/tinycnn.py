"""A four-layer CNN (about 0.1 M parameters) for CPU smoke runs and tests; not a paper backbone.

``SMOKE=1 bash table1.sh`` swaps the paper's backbones for it, so that every row of a table trains
and checkpoints in well under a second (a ResNet-18 checkpoint with its Adam state is 135 MB).
It has no ImageNet weights; ``--pretrained_path`` loads a state dict of its own.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from . import REGISTRY
from ._base import Backbone, PretrainedWeightsError, load_into, load_state_dict_file

WIDTHS = (16, 32, 64, 128)


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


@REGISTRY.register("tinycnn")
def tinycnn(pretrained: bool, pretrained_path: Optional[str] = None) -> Backbone:
    if pretrained and not pretrained_path:
        raise PretrainedWeightsError("backbone 'tinycnn' has no ImageNet weights; train it with "
                                     "--not_pretrained (or give --pretrained_path)")
    channels = (3,) + WIDTHS
    features = nn.Sequential(*[_stage(a, b) for a, b in zip(channels[:-1], channels[1:])])
    if pretrained_path:
        load_into(features, load_state_dict_file(pretrained_path, "tinycnn"), pretrained_path,
                  "tinycnn")
    return Backbone(features=features, feature_dim=WIDTHS[-1])
