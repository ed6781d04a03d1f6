"""The kernel-set switch that .ci/run relies on to test other CPUs' arithmetic on this one."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import cpu_capabilities
from tests.fixtures import REPO_ROOT


def capability_in_child(value: str) -> str:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": value}
    result = subprocess.run([sys.executable, "-c", "import torch; "
                             "print(torch.backends.cpu.get_cpu_capability())"],
                            env=env, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return result.stdout.strip().lower()


@pytest.mark.skipif(bool(os.environ.get("ATEN_CPU_CAPABILITY")),
                    reason="ATEN_CPU_CAPABILITY is set: the native kernel set is not visible")
def test_every_listed_kernel_set_is_the_one_torch_then_uses():
    listed = cpu_capabilities.supported()
    assert listed[0] == "default" and listed[-1] == cpu_capabilities.native_capability()
    assert cpu_capabilities.supported(below_native=True) == listed[:-1]
    for value in listed:
        assert capability_in_child(value) == value
        assert cpu_capabilities.environment(value).split() == [
            f"ATEN_CPU_CAPABILITY={value}",
            f"ONEDNN_MAX_CPU_ISA={cpu_capabilities.ONEDNN_ISA[value]}"]
