"""The CPU kernel sets torch can use on this machine (``ATEN_CPU_CAPABILITY`` values).

torch picks the widest vector kernels the CPU has (default < avx2 < avx512 on x86-64); setting
``ATEN_CPU_CAPABILITY`` to a narrower one makes it use those, as a machine without the wider
instructions would. ``.ci/run`` runs the training-outcome tests under each narrower set.

    python tests/cpu_capabilities.py               # every set this CPU can run, narrowest first
    python tests/cpu_capabilities.py --below-native  # those narrower than the CPU's own
"""
from __future__ import annotations

import argparse
import os
from typing import List

import torch

ORDER = ("default", "avx2", "avx512")


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
    print(" ".join(supported(parser.parse_args().below_native)))
