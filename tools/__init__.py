"""User-facing commands, each ``python -m tools.NAME``, working on run folders.

``evaluate`` (a checkpoint on its own or another dataset), ``embed`` (any image folder to an
``.npz``), ``search`` (top-k of query images in an embedded gallery), ``export`` (TorchScript or
ONNX), ``summarize`` (runs that differ only in ``--seed`` as mean +- std). See README.md.
"""
from __future__ import annotations

import sys


def _quiet_interrupt(kind, value, trace, previous=sys.excepthook) -> None:
    """Ctrl-C before a command's own handling starts (while torch and friends are imported,
    which takes seconds): one line instead of a traceback; Python then exits with status 130."""
    if issubclass(kind, KeyboardInterrupt):
        print("error: interrupted (Ctrl-C); nothing was written", file=sys.stderr)
        return
    previous(kind, value, trace)


if sys.argv[:1] == ["-m"]:  # ``python -m tools.NAME`` (argv[0] is "-m" until it is found)
    sys.excepthook = _quiet_interrupt
