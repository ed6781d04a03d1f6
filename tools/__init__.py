"""User-facing commands, each ``python -m tools.NAME``, working on run folders.

``evaluate`` (a checkpoint on its own or another dataset), ``embed`` (any image folder to an
``.npz``), ``search`` (top-k of query images in an embedded gallery), ``export`` (TorchScript or
ONNX), ``summarize`` (runs that differ only in ``--seed`` as mean +- std). See README.md.
"""
