"""Backbones, selected with ``--arch``.

An arch name is a registered backbone followed by option words joined with ``_``:
``frozen`` (BatchNorm in eval mode; its affine weights still train, as published), ``normalize``
(L2-normalized embedding), ``double`` (average plus max pooling, summed), ``he`` (He
initialisation of the embedding layer), ``bn_norm`` (BatchNorm1d after the embedding layer). Any
other word is a run label, so the paper's names such as
``bninception_double_frozen_normalize_multiSim_300epoch_200_250_embeddingProducer_DAS_numScale8``
are accepted as they are. ``timm/<model>`` names any model of the optional timm package
(``timm/vit_small_patch16_224_normalize``; see ``timm_backbone.py``). A new backbone is one file
registering a builder ``(pretrained, pretrained_path) -> Backbone``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Optional

from utilities.checkpoint import CheckpointError
from utilities.registry import Registry, UnknownNameError

from ._base import EmbeddingNetwork, PretrainedWeightsError

REGISTRY: Registry = Registry("backbone", "--arch")
REGISTRY.import_members(__name__, __path__)

from . import timm_backbone  # noqa: E402  (registered above; parse_arch reads its names)
from .timm_backbone import layer_decay_groups  # noqa: E402

OPTION_WORDS = ("frozen", "normalize", "double", "he", "bn_norm")


@dataclass(frozen=True)
class ArchSpec:
    backbone: str
    words: FrozenSet[str]
    model: str = ""  # backbone "timm": the timm model name, with its pretrained tag if given

    @property
    def head(self) -> str:
        """The text of the arch name that names the backbone (``timm/<model>`` for timm)."""
        return timm_backbone.PREFIX + self.model if self.model else self.backbone

    @property
    def frozen(self) -> bool:
        return "frozen" in self.words

    @property
    def normalize(self) -> bool:
        return "normalize" in self.words

    @property
    def double(self) -> bool:
        return "double" in self.words

    @property
    def he(self) -> bool:
        return "he" in self.words

    @property
    def bn_norm(self) -> bool:
        return "bn_norm" in self.words


def parse_arch(name: str) -> ArchSpec:
    """Split an arch name into its backbone (longest registered prefix) and option words;
    ``timm/<model>`` names a timm model (the longest timm name the rest starts with)."""
    model = ""
    if name.startswith(timm_backbone.PREFIX):
        backbone = "timm"
        model, rest = timm_backbone.split_timm_name(name[len(timm_backbone.PREFIX):], name)
    else:
        candidates = [b for b in REGISTRY.names()
                      if b != "timm" and (name == b or name.startswith(b + "_"))]
        if not candidates:
            valid = [b if b != "timm" else timm_backbone.PREFIX + "<timm model name>"
                     for b in REGISTRY.names()]
            raise UnknownNameError(f"unknown backbone in --arch '{name}'; the name must start "
                                   f"with one of: {', '.join(valid)}")
        backbone = max(candidates, key=len)
        rest = name[len(backbone):]
    parts = [w for w in rest.split("_") if w]
    words = set(parts)
    # ``bn_norm`` is one option written with the separator: the words "bn" then "norm".
    if any(a == "bn" and b == "norm" for a, b in zip(parts, parts[1:])):
        words.add("bn_norm")
    return ArchSpec(backbone, frozenset(words), model)


def with_backbone(name: str, backbone: str) -> str:
    """Arch ``name`` with its backbone replaced by ``backbone``, everything after it (option words,
    run labels) kept as written: ``with_backbone("resnet50_frozen_normalize", "tinycnn")`` is
    ``"tinycnn_frozen_normalize"``. Used by SMOKE sweeps and tests to shrink a paper row."""
    return backbone + name[len(parse_arch(name).head):]


def same_weight_layout(arch: str, other: str) -> bool:
    """Whether networks of two arch names hold the same weights: same backbone and pooling
    (``frozen``, ``normalize`` and run labels change behaviour, not weights). Names without a
    registered backbone are compared as text."""
    try:
        spec, other_spec = parse_arch(arch), parse_arch(other)
    except UnknownNameError:
        return arch == other
    return ((spec.backbone, timm_backbone.base_model(spec.model), spec.double)
            == (other_spec.backbone, timm_backbone.base_model(other_spec.model),
                other_spec.double))


def check_checkpoint(checkpoint: Dict[str, Any], arch: str, embed_dim: int, path: str) -> None:
    """Refuse a checkpoint trained with another backbone or embedding size, saying what differs."""
    saved = checkpoint.get("network", {})
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise CheckpointError(f"'{path}' is not a checkpoint of main.py (no network weights)")
    differences = []
    if saved.get("embed_dim") != embed_dim:
        differences.append(f"--embed_dim {saved.get('embed_dim')} there, {embed_dim} here")
    saved_arch = saved.get("arch", "")
    if not same_weight_layout(saved_arch, arch):
        differences.append(f"--arch '{saved_arch}' there, '{arch}' here")
    if differences:
        raise CheckpointError(f"checkpoint '{path}' does not fit this run: "
                              + "; ".join(differences))


def select(name: str, embed_dim: int, pretrained: bool = True,
           pretrained_path: Optional[str] = None, dropout: float = -1.0,
           freeze_bn_affine: bool = False) -> EmbeddingNetwork:
    """Build the embedding network described by arch ``name`` (``dropout``: ``--drop``;
    ``freeze_bn_affine``, with ``frozen``, also fixes the BatchNorm affine weights, which the
    published code trains)."""
    spec = parse_arch(name)
    # a timm backbone is one builder for every timm model: it takes the model name and checks
    # the words it cannot honour (frozen without BatchNorm, double without a feature map)
    extra = dict(model_name=spec.model, arch=name, frozen=spec.frozen,
                 double=spec.double) if spec.model else {}
    backbone = REGISTRY.get(spec.backbone)(pretrained, pretrained_path, **extra)
    network_class = getattr(backbone, "network_class", EmbeddingNetwork)
    return network_class(backbone, embed_dim, normalize=spec.normalize, double_pool=spec.double,
                         frozen_bn=spec.frozen, name=name, dropout=dropout,
                         he_init=spec.he, bn_norm=spec.bn_norm,
                         freeze_bn_affine=freeze_bn_affine)


__all__ = ["select", "parse_arch", "layer_decay_groups", "with_backbone", "same_weight_layout",
           "check_checkpoint", "EmbeddingNetwork", "PretrainedWeightsError", "REGISTRY"]
