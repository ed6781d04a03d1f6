"""A trained network rebuilt from its run folder: config.json plus a checkpoint.

Shared by the figure commands and the ``tools`` commands (evaluate, embed, search, export), so that
there is one place that finds a run's checkpoint, checks it against the run's configuration and
builds the network with the run's test transform. Checkpoints are read with ``weights_only=True``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

import architectures
from datasets import DatasetSplits, build_transform
from datasets._transforms import output_crop
from parameters import RunSpec
from training.build import build_network, load_run_data
from utilities.checkpoint import CheckpointError, load_checkpoint
from utilities.checkpoint import check_state_dict as shared_check_state_dict
from utilities.run_folder import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT

CHECKPOINTS = {"last": LAST_CHECKPOINT, "best": BEST_CHECKPOINT}


@dataclass
class TrainedModel:
    """The network of a run in eval mode (on the CPU), its test transform and where it came from."""

    folder: str
    checkpoint_path: str
    spec: RunSpec  # the run's options, as config.json holds them
    model: torch.nn.Module
    transform: Callable
    epoch: int  # the epoch the checkpoint was written after

    @property
    def crop_size(self) -> int:
        """Side of the square input the test transform produces (its final CenterCrop)."""
        return output_crop(self.spec.crop_size, self.spec.augmentation)

    @property
    def normalized(self) -> bool:
        return bool(getattr(self.model, "normalize", False))

    def splits(self, source: Optional[str] = None,
               folder_name: Optional[str] = None) -> DatasetSplits:
        """The run's data as it trained and evaluated on it (``training.build.load_run_data``: its
        --data_split, class split file and train/validation options included)."""
        return load_run_data(self.spec, source, folder_name)


def resolve_checkpoint(path: str, checkpoint: str = "last") -> Tuple[str, str]:
    """``(run folder, checkpoint file)`` for a run folder (``checkpoint`` = last or best) or for a
    checkpoint file inside a run folder."""
    if checkpoint not in CHECKPOINTS:
        raise CheckpointError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got "
                              f"'{checkpoint}'")
    if os.path.isfile(path):
        folder, checkpoint_path = os.path.dirname(os.path.abspath(path)), path
    elif os.path.isdir(path):
        folder = path
        checkpoint_path = os.path.join(folder, CHECKPOINTS[checkpoint])
    else:
        raise CheckpointError(f"'{path}' is neither a run folder nor a checkpoint file")
    if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        raise CheckpointError(f"'{folder}' holds no {CONFIG_FILE}; expected a run folder written "
                              f"by main.py")
    if not os.path.isfile(checkpoint_path):
        raise CheckpointError(f"'{folder}' holds no {CHECKPOINTS[checkpoint]} (has the run "
                              f"finished an epoch?)")
    return folder, checkpoint_path


def check_against_config(network: Dict, spec: RunSpec, checkpoint_path: str) -> None:
    """Refuse a checkpoint of another backbone, pooling or embedding size than config.json."""

    saved_arch, arch = str(network.get("arch", "")), spec.arch
    problems = []
    if not architectures.same_weight_layout(saved_arch, arch):
        problems.append(f"--arch '{saved_arch}' in the checkpoint, '{arch}' in config.json")
    if network.get("embed_dim") != spec.embed_dim:
        problems.append(f"--embed_dim {network.get('embed_dim')} in the checkpoint, "
                        f"{spec.embed_dim} in config.json")
    if problems:
        raise CheckpointError(f"checkpoint '{checkpoint_path}' is not of the network its run's "
                              f"config.json describes: " + "; ".join(problems))


def check_state_dict(saved: Dict, expected: Dict[str, torch.Tensor], checkpoint_path: str,
                     arch: str) -> None:
    """Refuse network weights that cannot be loaded or used, naming the first bad tensor: the
    check main.py --resume shares (:func:`utilities.checkpoint.check_state_dict`)."""
    shared_check_state_dict(saved, expected, f"checkpoint '{checkpoint_path}'",
                            f"--arch '{arch}' of its config.json")


def load_trained_model(path: str, checkpoint: str = "last") -> TrainedModel:
    """Rebuild the network of a run folder or checkpoint file, refusing a checkpoint whose
    backbone or embedding size differs from what the run's config.json says."""

    folder, checkpoint_path = resolve_checkpoint(path, checkpoint)
    try:
        spec = RunSpec.load(folder)  # a missing or ill-typed option is named with its file
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    state = load_checkpoint(checkpoint_path)
    network = state.get("network") if isinstance(state, dict) else None
    if not isinstance(network, dict) or not isinstance(network.get("state_dict"), dict):
        raise CheckpointError(f"'{checkpoint_path}' holds no network state; expected a checkpoint "
                              f"written by main.py")
    check_against_config(network, spec, checkpoint_path)
    model = build_network(spec, pretrained=False)
    check_state_dict(network["state_dict"], model.state_dict(), checkpoint_path, spec.arch)
    model.load_state_dict(network["state_dict"])
    model.eval()
    transform = build_transform(model.transform_config(spec.crop_size, spec.augmentation),
                                train=False)
    epoch = state.get("epoch", -1)
    return TrainedModel(folder, checkpoint_path, spec, model, transform,
                        epoch if isinstance(epoch, int) else -1)
