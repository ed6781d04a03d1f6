"""The embedding network shared by every backbone: features -> pooling -> linear -> (L2 norm)."""
from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from typing import Dict, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from datasets._transforms import InputNormalizer, TransformConfig
from utilities.checkpoint import tensor_problem, unloadable_reason
from utilities.errors import UserError


class PretrainedWeightsError(UserError, RuntimeError):
    """ImageNet weights are neither cached nor downloadable, or a --pretrained_path is unusable."""


@dataclass
class Backbone:
    """What a backbone member returns: a feature extractor and how it wants its input."""

    features: nn.Module  # (B, 3, H, W) -> (B, feature_dim, h, w)
    feature_dim: int
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    bgr_255: bool = False
    interpolation: str = "bilinear"  # of the resizes in the input transforms (timm: bicubic)


class EmbeddingNetwork(nn.Module):
    """Backbone features, global pooling, a linear embedding layer, optional L2 normalization.

    ``double_pool`` adds global max pooling to global average pooling, summed (the "double" arch
    word of the paper's scripts). ``frozen_bn`` keeps every BatchNorm layer in eval mode, so its
    running statistics stay those of ImageNet (class-balanced batches of 2 images per class give
    poor batch statistics); as in the published code, the affine weight and bias still train
    (with weight decay). ``freeze_bn_affine`` also fixes those and leaves them out of
    :meth:`backbone_parameters` (``--frozen_bn_affine``; see docs/PARITY.md).

    Options of the published DAS code: ``dropout`` (``--drop``; applied to the pooled features
    in training when > 0), ``he_init`` (arch word ``he``: Kaiming-normal fan-out initialisation
    of the embedding layer, zero bias), ``bn_norm`` (arch word ``bn_norm``: BatchNorm1d after the
    embedding layer, part of the embedding head, never frozen). ``warmup`` (set per epoch for
    ``--n_warm``) stops gradients at the pooled features, so only the embedding head learns.
    ``forward(images, return_norms=True)`` also returns the L2 norm of every row before the
    normalization, which the spherical embedding constraint (``criteria/_sec.py``) needs.
    """

    def __init__(self, backbone: Backbone, embed_dim: int, normalize: bool = True,
                 double_pool: bool = False, frozen_bn: bool = False, name: str = "",
                 dropout: float = -1.0, he_init: bool = False, bn_norm: bool = False,
                 freeze_bn_affine: bool = False) -> None:
        super().__init__()
        if not dropout < 1.0:
            raise ValueError(f"--drop {dropout} must be below 1 (a dropout probability; <= 0 is "
                             f"off)")
        self.name = name
        self.features = backbone.features
        self.last_linear = nn.Linear(backbone.feature_dim, embed_dim)
        if he_init:
            nn.init.kaiming_normal_(self.last_linear.weight, mode="fan_out")
            nn.init.zeros_(self.last_linear.bias)
        self.embedding_bn = nn.BatchNorm1d(embed_dim) if bn_norm else None
        self.dropout = float(dropout)
        self.warmup = False
        self.embed_dim = embed_dim
        self.normalize = normalize
        self.double_pool = double_pool
        self.frozen_bn = frozen_bn
        self.freeze_bn_affine = frozen_bn and freeze_bn_affine
        self.input_convention = dict(mean=tuple(backbone.mean), std=tuple(backbone.std),
                                     bgr_255=backbone.bgr_255)
        self.interpolation = backbone.interpolation
        # uint8 images from the loader are normalized here, on the network's device
        self.input_normalizer = InputNormalizer(**self.input_convention)
        if self.freeze_bn_affine:
            for module in self.batchnorm_layers():
                for parameter in module.parameters():
                    parameter.requires_grad_(False)

    def batchnorm_layers(self) -> Iterable[nn.Module]:
        """The backbone's BatchNorm layers (``frozen`` freezes these, not ``bn_norm``'s)."""
        return (m for m in self.features.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def train(self, mode: bool = True) -> "EmbeddingNetwork":
        super().train(mode)
        if self.frozen_bn:
            for module in self.batchnorm_layers():
                module.eval()
        return self

    def transform_config(self, crop_size: int, augmentation: str) -> TransformConfig:
        return TransformConfig(crop_size=crop_size, augmentation=augmentation,
                               interpolation=self.interpolation, **self.input_convention)

    def embedding_parameters(self) -> Iterable[nn.Parameter]:
        """The embedding head: the linear layer, and the ``bn_norm`` BatchNorm when present."""
        head = list(self.last_linear.parameters())
        if self.embedding_bn is not None:
            head += list(self.embedding_bn.parameters())
        return head

    def backbone_parameters(self) -> Iterable[nn.Parameter]:
        return (p for p in self.features.parameters() if p.requires_grad)

    def forward(self, images: torch.Tensor, return_norms: bool = False):
        """Embeddings (B, D) of uint8 images (normalized here) or of already normalized float
        ones; with ``return_norms`` also the pre-normalization row norms (B,)."""
        feature_map = self.features(self.input_normalizer(images))
        pooled = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        if self.double_pool:
            pooled = pooled + F.adaptive_max_pool2d(feature_map, 1).flatten(1)
        if self.warmup:  # --n_warm: the backbone gets no gradient, as in the published code
            pooled = pooled.detach()
        if self.dropout > 0:
            pooled = F.dropout(pooled, p=self.dropout, training=self.training)
        embeddings = self.last_linear(pooled)
        if self.embedding_bn is not None:
            embeddings = self.embedding_bn(embeddings)
        norms = embeddings.float().norm(dim=-1) if return_norms else None
        if self.normalize:
            embeddings = F.normalize(embeddings.float(), dim=-1)
        return (embeddings, norms) if return_norms else embeddings


def hub_cache_file(url: str) -> str:
    """Where torch.hub keeps the file of ``url`` (honours $TORCH_HOME)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def load_imagenet_state_dict(url: str, arch: str) -> Dict[str, torch.Tensor]:
    """ImageNet weights from the torch hub cache, downloading them there when possible."""
    cached = hub_cache_file(url)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True,
                                                  weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise PretrainedWeightsError(
            f"ImageNet weights for '{arch}' are not cached at '{cached}' and could not be "
            f"downloaded from {url} ({error}). Download that file and place it at '{cached}' "
            f"(or set $TORCH_HOME), pass --pretrained_path FILE, or train from random weights "
            f"with --not_pretrained.") from None


def load_state_dict_file(path: str, arch: str) -> Dict[str, torch.Tensor]:
    """A local state dict for --pretrained_path, loaded without running code from the file."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"--pretrained_path '{path}' is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(f"--pretrained_path '{path}' is not a checkpoint "
                                     f"({unloadable_reason(path, error)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"--pretrained_path '{path}' holds a {type(state).__name__}, "
                                     f"expected a state dict")
    odd = [key for key in state if not isinstance(key, str)]
    if odd:
        raise PretrainedWeightsError(f"--pretrained_path '{path}' is damaged: key {odd[0]!r} is "
                                     f"not a tensor name; expected a state dict")
    return state


def load_into(module: nn.Module, state: Dict[str, torch.Tensor], source: str, arch: str,
              ignore_prefixes: tuple = ("fc.", "last_linear.", "aux1.", "aux2.")) -> None:
    """Load ``state`` into the backbone model, ignoring its ImageNet classifier; stop with a
    message when weights of the backbone are missing or mis-shaped."""
    state = {k.removeprefix("module."): v for k, v in state.items()
             if not k.removeprefix("module.").startswith(ignore_prefixes)}
    own = module.state_dict()
    # Damage first (not a tensor, no data, NaN/inf), so that it is never called another network's
    # shape and NaN weights are refused here, naming the file, not blamed on training later.
    for key, value in state.items():
        if key not in own:
            continue  # metadata or tensors of other heads: not loaded
        problem = tensor_problem(value, own[key])
        if problem is not None and not problem.startswith("has shape"):
            raise PretrainedWeightsError(f"weights from {source} are damaged: '{key}' {problem}; "
                                         f"expected finite weights of backbone '{arch}'")
    missing = [k for k in own if k not in state and not k.startswith(ignore_prefixes)
               and not k.endswith("num_batches_tracked")]
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or mismatched:
        detail = (f"missing {len(missing)} tensor(s), e.g. {missing[:3]}" if missing else
                  f"shape mismatch for {mismatched[:3]}")
        raise PretrainedWeightsError(f"weights from {source} do not fit backbone '{arch}': "
                                     f"{detail}")
    module.load_state_dict(state, strict=False)

