"""Densely-Anchored Sampling (DAS; Liu et al., ECCV 2022), the paper's contribution.

It sits between the backbone and the miner/criterion: every batch of embeddings gets generated
"dense anchors" before mining and the loss. ``sampling.py``: the module (DFS + MTS);
``options.py``: its command-line options and their one check; ``figure.py``: the frequency-matrix
figure. See docs/DAS.md.
"""
from .figure import FREQUENCY_FILE, frequency_files, plot_frequency, save_frequency_if_due
from .options import SWITCH, add_options, build_producer, check_options, option_names
from .sampling import DenselyAnchoredSampling, check_settings

__all__ = ["DenselyAnchoredSampling", "FREQUENCY_FILE", "SWITCH", "add_options", "build_producer",
           "check_options", "check_settings", "frequency_files", "option_names",
           "plot_frequency", "save_frequency_if_due"]
