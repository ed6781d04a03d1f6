"""The checkpoint format (checkpoint_last.pth / checkpoint_best.pth) and --resume.

:func:`run_state` writes everything a resume needs, :func:`restore_run_state` reads it back
(keys: ``utilities.checkpoint.RUN_STATE_KEYS``), and :func:`resume_options` turns
``--resume FOLDER`` into the run's saved spec, refusing options that would change the
experiment.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import architectures
from parameters import RunSpec, build_parser, resume_overridable
from training.build import Training
from training.checks import OptionError
from training.loop import EpochStats
from utilities import checkpoint as ckpt
from utilities import distributed
from utilities import run_folder as rf
from utilities.options import option_name
from utilities.seeding import rng_state, set_rng_state

# Options a --resume may give with a new value (parameters.resume_overridable).
RESUME_OVERRIDABLE = resume_overridable()


def resume_options(folder: str, given: Dict) -> RunSpec:
    """For --resume: the saved spec, checked, with the options of RESUME_OVERRIDABLE taken from
    the command line. Any other option given with a value other than the saved one is refused,
    naming it. Locks the run folder first (rank 0)."""
    if not os.path.isdir(folder):
        raise ckpt.CheckpointError(f"--resume '{folder}' is not a run folder")
    if not os.path.isfile(os.path.join(folder, rf.LAST_CHECKPOINT)):
        raise ckpt.CheckpointError(f"--resume '{folder}' holds no {rf.LAST_CHECKPOINT} to continue "
                                   f"from")
    if distributed.is_main_process():
        rf.lock_run_folder(folder)
    saved = RunSpec.load(folder)
    config = saved.to_config()
    names = {action.dest: option_name(action) for action in build_parser()._actions}
    refused = [f"{names[dest]} {value!r} (the run has {config.get(dest)!r})"
               for dest, value in given.items()
               if dest not in RESUME_OVERRIDABLE + ("resume",) and value != config.get(dest)]
    if refused:
        raise OptionError(f"--resume continues '{folder}' with its saved options; refused: "
                          f"{'; '.join(refused)}. Only "
                          f"{', '.join('--' + d for d in RESUME_OVERRIDABLE)} may change on "
                          f"resume; start a new run for other settings")
    for dest in RESUME_OVERRIDABLE:
        if dest in given:
            setattr(saved, dest, given[dest])
    saved.resume = folder
    return saved


def run_state(training: Training, epoch: int, global_step: int, best: Dict,
              epoch_stats: EpochStats) -> Dict:
    """Everything a resume needs after ``epoch`` (and ``epoch_stats.steps`` steps into the next
    one): the checkpoint format of checkpoint_last.pth / checkpoint_best.pth
    (ckpt.RUN_STATE_KEYS), read back by :func:`restore_run_state`."""
    spec, scheduler = training.opt, training.scheduler
    return {"epoch": epoch, "global_step": global_step, "best": best,
            "network": {"arch": spec.arch, "embed_dim": spec.embed_dim,
                        "state_dict": training.model.state_dict()},
            "optimizer": training.optimizer.state_dict(),
            "scheduler": {k: (dict(v) if k == "milestones" else v)
                          for k, v in scheduler.state_dict().items()},
            "criterion": training.criterion.state_dict(),
            "das": training.das.state_dict() if training.das is not None else {},
            "sec": training.sec.state_dict() if training.sec is not None else {},
            "sampler": training.sampler.state_dict(), "epoch_stats": epoch_stats.state_dict(),
            "rng": rng_state()}


def restore_run_state(training: Training, path: str,
                      epoch_stats: EpochStats) -> Tuple[int, int, Dict]:
    """Load the checkpoint at ``path`` (checked against the run's arch and embedding size first)
    into ``training`` and ``epoch_stats``; returns ``(epoch, global_step, best)``."""
    state = ckpt.load_checkpoint(path, required=ckpt.RUN_STATE_KEYS)
    architectures.check_checkpoint(state, training.opt.arch, training.opt.embed_dim, path)
    # Damaged or non-finite weights are refused here, naming the file, not an epoch later.
    where = f"checkpoint '{path}'"
    ckpt.check_state_dict(state["network"]["state_dict"], training.model.state_dict(), where,
                          f"--arch '{training.opt.arch}'")
    for part in ("optimizer", "criterion", "das", "sec"):
        ckpt.check_finite_state(state.get(part), where, part)
    parts = [("optimizer", training.optimizer.load_state_dict),
             ("scheduler", training.scheduler.load_state_dict),
             ("criterion", training.criterion.load_state_dict),
             ("das", training.das.load_state_dict if training.das is not None else None),
             ("sec", training.sec.load_state_dict if training.sec is not None else None),
             ("sampler", training.sampler.load_state_dict),
             ("epoch_stats", lambda s: epoch_stats.load_state_dict(s, training.device)),
             ("rng", set_rng_state)]
    part = "network"
    try:
        training.model.load_state_dict(state["network"]["state_dict"])
        for part, load in parts:
            if load is not None:
                load(state[part])
        epoch, global_step, best = state["epoch"], state["global_step"], state["best"]
        if not (isinstance(epoch, int) and isinstance(global_step, int)
                and isinstance(best, dict)):
            part = "position"
            raise TypeError("epoch, global_step or best has the wrong type")
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ckpt.CheckpointError(f"{where} is damaged: its {part} state does not load into "
                                   f"this run ({detail})") from None
    return epoch, global_step, best
