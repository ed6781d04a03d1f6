"""The CPU kernel sets torch can use on this machine, and how to make it use a narrower one.

torch picks the widest vector kernels the CPU has (default < avx2 < avx512 on x86-64), in two
places: ATen's own kernels (``ATEN_CPU_CAPABILITY``) and oneDNN's convolutions and matrix
products (``ONEDNN_MAX_CPU_ISA``). Setting both to a narrower set makes this CPU compute what a
machine without the wider instructions computes: the bundled default run gives 52.0 R@1 with
both at AVX2 here, as on a real AVX2-only EPYC, but 57.4 with ATEN_CPU_CAPABILITY alone
(docs/PERFORMANCE.md). ``.ci/run`` runs the training-outcome tests under each narrower set.

    python tests/cpu_capabilities.py                    # every set, narrowest first
    python tests/cpu_capabilities.py --below-native     # those narrower than the CPU's own
    python tests/cpu_capabilities.py --below-native --env  # one line of VAR=value per set
"""
from __future__ import annotations

import argparse
import os
from typing import List

import torch

ORDER = ("default", "avx2", "avx512")
# oneDNN's name for the widest instruction set of each kernel set (SSE4.1 is x86-64's baseline
# for oneDNN; "ALL" leaves oneDNN free, as with no variable).
ONEDNN_ISA = {"default": "SSE41", "avx2": "AVX2", "avx512": "ALL"}


def environment(capability: str) -> str:
    """The variables that make torch compute with ``capability``'s kernels, as ``VAR=value``."""
    return f"ATEN_CPU_CAPABILITY={capability} ONEDNN_MAX_CPU_ISA={ONEDNN_ISA[capability]}"


def native_capability() -> str:
    """The kernel set torch picks on this CPU when ``ATEN_CPU_CAPABILITY`` is unset."""
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        raise SystemExit("unset ATEN_CPU_CAPABILITY to ask for this CPU's own kernel set")
    return torch.backends.cpu.get_cpu_capability().lower()


def supported(below_native: bool = False) -> List[str]:
    """Kernel sets up to the native one (x86-64); only ``default`` on other processors."""
    native = native_capability()
    if native not in ORDER:
        return [] if below_native else ["default"]
    upto = ORDER[:ORDER.index(native) + (0 if below_native else 1)]
    return list(upto)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--below-native", action="store_true",
                        help="only the sets narrower than the one torch picks on this CPU")
    parser.add_argument("--env", action="store_true",
                        help="print each set's environment variables, one line per set")
    args = parser.parse_args()
    sets = supported(args.below_native)
    print("\n".join(map(environment, sets)) if args.env else " ".join(sets))
