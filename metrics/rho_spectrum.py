"""``rho_spectrum@N``: how evenly the embedding matrix spreads over its directions (the spectral
decay rho of Roth et al. 2020, "Revisiting Training Strategies and Generalization Performance in
Deep Metric Learning"), with N as in the DAS code.

The singular values of the (N_samples, D) embedding matrix (not centred) are taken largest
first, D - 1 of them (the published code's truncated SVD keeps D - 1 components). For N != 0 the
first |N| - 1 are dropped; the rest are normalized to sum 1 (s) and compared with the uniform
distribution U of the same length by the Kullback-Leibler divergence (natural log):

- N > 0: KL(U || s) (``rho_spectrum@1`` is the paper's rho; infinite when a kept singular value
  is 0, as in the published code);
- N < 0: KL(s || U);
- N = 0: s itself, an array, logged as a TensorBoard histogram (no metrics.csv column).

Lower values mean a flatter spectrum (more directions in use).
"""
from __future__ import annotations

from typing import Union

import numpy as np
from scipy.stats import entropy

from . import REGISTRY
from ._base import SpectrumMetric


@REGISTRY.register("rho_spectrum@N")
class RhoSpectrum(SpectrumMetric):
    def __init__(self, name: str, mode: int) -> None:
        super().__init__(name)
        self.mode = mode
        self.scalar = mode != 0

    @classmethod
    def from_name(cls, name: str) -> "RhoSpectrum":
        return cls(name, int(name.rsplit("@", 1)[1]))

    def score(self, singular_values: np.ndarray) -> Union[float, np.ndarray]:
        dimension = len(singular_values)
        kept = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1][:dimension - 1]
        if self.mode != 0:
            kept = kept[abs(self.mode) - 1:]
        if kept.size == 0:
            raise ValueError(f"metric '{self.name}': with {dimension}-dimensional embeddings "
                             f"|N| must be at most {dimension - 1} (the spectrum has "
                             f"{dimension - 1} values and N drops the first |N| - 1)")
        spectrum = kept / kept.sum()
        uniform = np.full(len(spectrum), 1.0 / len(spectrum))
        if self.mode > 0:
            return float(entropy(uniform, spectrum))
        if self.mode < 0:
            return float(entropy(spectrum, uniform))
        return spectrum
