"""Any model of timm (PyTorch Image Models) as a backbone: ``--arch timm/<model>[.<tag>]_<words>``.

timm (Wightman, github.com/huggingface/pytorch-image-models) provides ViTs (supervised, DINO,
CLIP), ConvNeXt, EfficientNet, timm's own ResNets and more behind one interface; it is an
optional dependency (``pip install '.[timm]'``). The model is built with ``num_classes=0`` and its
own pooling (``forward_head(pre_logits=True)``: the CLS token of a ViT, average pooling plus the
head's LayerNorm of a ConvNeXt), so the embedding layer sees the representation the model was
pretrained to give. Mean and std come from the model's pretrained config in timm.

Arch words: ``normalize``, ``he``, ``bn_norm`` as for every backbone; ``frozen`` freezes the
BatchNorm statistics and is refused for a model without BatchNorm (ViT, ConvNeXt normalize with
LayerNorm); ``double`` (average plus max pooling of the last feature map, summed) needs a CNN
feature map (N, C, h, w) and is refused otherwise. ViTs are built with timm's
``dynamic_img_size`` (position embeddings interpolated to the input's patch grid), so any
``--crop_size`` that is a multiple of the patch size works; other fixed-size models take only
their native size, CNNs any size.
"""
from __future__ import annotations

import difflib
import functools
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from datasets._transforms import output_crop
from utilities.errors import UserError
from utilities.registry import UnknownNameError

from . import REGISTRY
from ._base import (Backbone, EmbeddingNetwork, PretrainedWeightsError, load_into,
                    load_state_dict_file)

PREFIX = "timm/"
TIMM_PIN = "1.0.31"  # as in requirements-dev.txt and pyproject.toml's [timm] extra
INSTALL = f"pip install 'timm=={TIMM_PIN}' (or pip install '.[timm]' in the clone)"
FIND_NAMES = "python -c \"import timm; print(timm.list_models('*vit*', pretrained=True))\""


class TimmUnavailableError(UnknownNameError):
    """``--arch timm/...`` without the timm package installed."""


class TimmOptionError(UserError, ValueError):
    """An arch word or ``--crop_size`` that the chosen timm model cannot take."""


def require_timm():
    """The timm module, or a start-up error with the install command."""
    try:
        import timm  # optional dependency
    except ImportError:
        raise TimmUnavailableError(f"--arch {PREFIX}... needs the timm package, which is not "
                                   f"installed here: {INSTALL}") from None
    return timm


@functools.lru_cache(maxsize=1)
def _model_names() -> Tuple[str, ...]:
    return tuple(require_timm().list_models())


@functools.lru_cache(maxsize=None)
def _tags(model: str) -> Tuple[str, ...]:
    """Pretrained tags of ``model`` (``dino``, ``augreg_in21k_ft_in1k``, ...)."""
    names = require_timm().list_pretrained(model + ".*")
    return tuple(name.split(".", 1)[1] for name in names if "." in name)


def split_timm_name(rest: str, arch: str) -> Tuple[str, str]:
    """``rest`` (the arch name after ``timm/``) as (timm model name with its pretrained tag, the
    option words after it). The model is the longest timm name that ``rest`` starts with, so
    ``vit_small_patch16_224_normalize`` is ``vit_small_patch16_224`` plus ``_normalize``."""
    require_timm()  # before the cached name list: without timm, say how to install it
    base_part, dot, tag_part = rest.partition(".")
    names = _model_names()
    candidates = [n for n in names if base_part == n or base_part.startswith(n + "_")]
    if dot:  # a tag: the base name is everything before the dot
        candidates = [n for n in candidates if n == base_part]
    if not candidates:
        close = difflib.get_close_matches(base_part, names, n=5, cutoff=0.6)
        hint = f"close names: {', '.join(close)}; " if close else ""
        raise UnknownNameError(f"unknown timm model in --arch '{arch}': '{base_part}' is not a "
                               f"model of timm {require_timm().__version__}; {hint}list the "
                               f"names with {FIND_NAMES} (write them as {PREFIX}<name>)")
    model = max(candidates, key=len)
    if not dot:
        return model, base_part[len(model):]
    tags = [t for t in _tags(model) if tag_part == t or tag_part.startswith(t + "_")]
    if not tags:
        raise UnknownNameError(f"unknown pretrained tag in --arch '{arch}': '{model}' has the "
                               f"tags {', '.join(_tags(model)) or '(none)'}")
    tag = max(tags, key=len)
    return f"{model}.{tag}", tag_part[len(tag):]


def base_model(model: str) -> str:
    """The model name without its pretrained tag (the tag changes weights, not their layout)."""
    return model.split(".", 1)[0]


class TimmFeatures(nn.Module):
    """The timm model as a feature extractor giving (B, C, h, w): its own pooled features as
    (B, C, 1, 1), or (``feature_map``, for ``double``) its last feature map."""

    def __init__(self, model: nn.Module, feature_map: bool) -> None:
        super().__init__()
        self.model = model
        self.feature_map = feature_map

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        if self.feature_map:
            return features
        return self.model.forward_head(features, pre_logits=True)[:, :, None, None]


@dataclass
class TimmBackbone(Backbone):
    """A :class:`Backbone` plus what the crop-size check and the optimizer need."""

    model_name: str = ""
    native_size: int = 224
    patch_size: int = 0  # ViTs built with dynamic_img_size; 0 otherwise
    fixed_input_size: bool = False

    @property
    def network_class(self) -> type:
        return TimmEmbeddingNetwork


class TimmEmbeddingNetwork(EmbeddingNetwork):
    """:class:`EmbeddingNetwork` of a timm backbone: refuses crop sizes the model cannot take."""

    def __init__(self, backbone: TimmBackbone, *args: Any, **kwargs: Any) -> None:
        super().__init__(backbone, *args, **kwargs)
        self.timm_model = backbone.model_name
        self.native_size = backbone.native_size
        self.patch_size = backbone.patch_size
        self.fixed_input_size = backbone.fixed_input_size

    def supported_crop(self, crop: int) -> Optional[str]:
        """None when ``crop`` works, else the sizes that do."""
        if self.patch_size:
            if crop % self.patch_size == 0:
                return None
            return (f"a multiple of its patch size {self.patch_size} (native "
                    f"{self.native_size})")
        if self.fixed_input_size and crop != self.native_size:
            return f"only its native size {self.native_size}"
        return None

    def transform_config(self, crop_size: int, augmentation: str):
        crop = output_crop(crop_size, augmentation)
        supported = self.supported_crop(crop)
        if supported:
            flag = (f"--augmentation big (crop {crop})" if augmentation == "big"
                    else f"--crop_size {crop_size}")
            raise TimmOptionError(f"{flag} does not fit --arch '{self.name}': timm model "
                                  f"'{self.timm_model}' takes {supported}")
        return super().transform_config(crop_size, augmentation)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _create(timm, model_name: str, pretrained: bool) -> Tuple[nn.Module, bool]:
    """(model, dynamic) with ``dynamic_img_size`` where the model class takes it (ViTs)."""
    try:
        return timm.create_model(model_name, pretrained=pretrained, num_classes=0,
                                 dynamic_img_size=True), True
    except TypeError as error:
        if "dynamic_img_size" not in str(error):
            raise
    return timm.create_model(model_name, pretrained=pretrained, num_classes=0), False


def _create_pretrained(timm, model_name: str, arch: str) -> Tuple[nn.Module, bool]:
    """The model with timm's own weights (downloaded to the Hugging Face cache when online)."""
    try:
        return _create(timm, model_name, pretrained=True)
    except (UserError, TypeError):
        raise
    except Exception as error:  # offline: huggingface_hub, OSError, RuntimeError ... differ
        config = timm.models.get_pretrained_cfg(model_name)
        hub = getattr(config, "hf_hub_id", None) if config is not None else None
        where = f"https://huggingface.co/{hub}" if hub else "the model's page"
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise PretrainedWeightsError(
            f"pretrained weights for '{arch}' are not in the Hugging Face cache and could not be "
            f"downloaded ({type(error).__name__}: {reason}). Download model.safetensors from "
            f"{where} and pass --pretrained_path FILE, or train from random weights with "
            f"--not_pretrained.") from None


def read_weights_file(path: str, arch: str) -> Dict[str, torch.Tensor]:
    """A local timm checkpoint for --pretrained_path: ``.safetensors`` or a torch file (a state
    dict, or a dict holding it under ``state_dict`` / ``model``), without running its code."""
    if not path.endswith(".safetensors"):
        state = load_state_dict_file(path, arch)
        if isinstance(state.get("model"), dict):  # timm's train.py checkpoints
            state = state["model"]
        return state
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"--pretrained_path '{path}' is not a file")
    from safetensors.torch import load_file  # installed with timm

    try:
        return load_file(path, device="cpu")
    except Exception as error:
        raise PretrainedWeightsError(f"--pretrained_path '{path}' is not a checkpoint (not a "
                                     f"readable safetensors file: {error})") from None


def load_weights_file(model: nn.Module, path: str, arch: str) -> None:
    """Load a local timm checkpoint through the model's own conversion (timm's
    ``checkpoint_filter_fn`` of its module: original-format checkpoints, position embeddings of
    another grid), ignoring the classifier; stop with one line when it does not fit."""
    state = read_weights_file(path, arch)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as error:  # a checkpoint of another model breaks the conversion
            raise PretrainedWeightsError(f"weights from {path} do not fit backbone '{arch}': "
                                         f"timm's conversion failed ({type(error).__name__}: "
                                         f"{error})") from None
    classifier = model.pretrained_cfg.get("classifier") or ()
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    load_into(model, state, path, arch, ignore_prefixes=tuple(c + "." for c in classifiers))


def _check_double(model: nn.Module, arch: str, model_name: str, size: int) -> None:
    """``double`` pools a CNN feature map: refuse other outputs; freeze head parameters that the
    feature map skips (a ConvNeXt's head LayerNorm), so that no parameter goes without gradient
    (DDP would stop)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model.forward_features(torch.zeros(1, 3, size, size))
    model.train(was_training)
    if output.dim() != 4 or output.shape[1] != model.num_features:
        raise TimmOptionError(f"--arch '{arch}': the word 'double' pools a CNN feature map (N, C, "
                              f"h, w), but timm model '{model_name}' gives "
                              f"{tuple(output.shape)}; drop 'double'")
    for parameter in model.parameters():
        parameter.grad = None
    model.forward_head(output.detach().requires_grad_(), pre_logits=True).sum().backward()
    for parameter in model.parameters():
        if parameter.grad is not None:
            parameter.grad = None
            parameter.requires_grad_(False)


@REGISTRY.register("timm")
def timm_backbone(pretrained: bool, pretrained_path: Optional[str] = None, model_name: str = "",
                  arch: str = "", frozen: bool = False, double: bool = False) -> TimmBackbone:
    """Build timm model ``model_name`` (a ``timm/`` arch; see the module docstring)."""
    timm = require_timm()
    arch = arch or PREFIX + model_name
    if not model_name:
        raise UnknownNameError(f"--arch '{arch}': name the timm model as {PREFIX}<model name>")
    if pretrained and not pretrained_path:
        model, dynamic = _create_pretrained(timm, model_name, arch)
    else:
        model, dynamic = _create(timm, model_name, pretrained=False)
        if pretrained_path:
            load_weights_file(model, pretrained_path, arch)
    if frozen and not _has_batchnorm(model):
        raise TimmOptionError(f"--arch '{arch}': the word 'frozen' freezes BatchNorm statistics, "
                              f"but timm model '{model_name}' has no BatchNorm layer; drop "
                              f"'frozen'")
    config = timm.data.resolve_model_data_config(model)
    native = int(config["input_size"][-1])
    if double:
        _check_double(model, arch, model_name, native)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", (0,))
    return TimmBackbone(
        features=TimmFeatures(model, feature_map=double), feature_dim=int(model.num_features),
        mean=tuple(float(v) for v in config["mean"]), std=tuple(float(v) for v in config["std"]),
        model_name=model_name, native_size=native, patch_size=int(patch[0]) if dynamic else 0,
        fixed_input_size=bool(model.pretrained_cfg.get("fixed_input_size", False)),
        interpolation=str(config.get("interpolation", "bilinear")))


def layer_decay_groups(network: EmbeddingNetwork, lr: float, weight_decay: float,
                       layer_decay: float) -> List[Dict[str, Any]]:
    """Backbone parameter groups with layer-wise learning-rate decay: a parameter of layer i of
    L gets ``lr * layer_decay ** (L - 1 - i)`` (BEiT, Bao et al. 2022; the recipe of ViT
    fine-tuning). Layers are numbered by timm's ``param_groups_layer_decay`` (the model's
    ``group_matcher``: patch embedding first, each block, the final norm last). Unlike timm's
    default, ``weight_decay`` applies to every parameter, as the classic backbones' group does
    (published code). Groups are ordered top layer first, so group 0 runs at ``lr``."""
    if not isinstance(network, TimmEmbeddingNetwork):
        raise TimmOptionError(f"--layer_decay {layer_decay} needs a timm backbone (--arch "
                              f"{PREFIX}<model>); '{network.name}' has no layer numbering for "
                              f"it (use --layer_decay 1)")
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(network.features.model, weight_decay=weight_decay,
                                      weight_decay_exclude_1d=False, layer_decay=layer_decay)
    groups.sort(key=lambda g: -g["lr_scale"])
    return [{"params": g["params"], "lr": lr * g["lr_scale"], "lr_scale": g["lr_scale"],
             "weight_decay": weight_decay, "name": f"backbone_layer{len(groups) - 1 - i}"}
            for i, g in enumerate(groups)]
