"""User-facing commands, each ``python -m tools.NAME``: use a trained run afterwards.

``evaluate`` (a checkpoint on its own or another dataset), ``embed`` (any image folder to an
``.npz``), ``search`` (top-k of query images in an embedded gallery), ``export`` (TorchScript or
ONNX). See README.md, "Using a trained model".
"""
