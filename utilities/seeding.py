"""Seeding and RNG-state capture, so that a seed fixes a run and a resume continues it exactly."""
from __future__ import annotations

import random
from typing import Any, Dict, Tuple

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_backend_flags(tf32: bool = True, cudnn_deterministic: bool = True) -> None:
    """CUDA kernel choices (``--tf32``/``--no_tf32``, ``--cudnn_deterministic``/
    ``--no_cudnn_deterministic``): TF32 for float32 matmuls and cuDNN convolutions, and whether
    cuDNN must pick deterministic algorithms (the published ``set_seed`` sets it to True with the
    seed). These are process-wide flags read only by CUDA kernels."""
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.deterministic = bool(cudnn_deterministic)


def rng_state() -> Dict[str, Any]:
    """The global RNG states in a form ``torch.load(weights_only=True)`` accepts (no pickled
    NumPy objects): Python's as nested lists, NumPy's as a tensor plus scalars."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sample_seeds(seed: int, epoch: int, batch_number: int, size: int) -> Tuple[int, ...]:
    """Per-image augmentation seeds of one batch, a function of (seed, epoch, batch) only."""
    rng = np.random.default_rng([seed, epoch, batch_number, 7919])
    return tuple(int(s) for s in rng.integers(0, 2**31 - 1, size=size))
