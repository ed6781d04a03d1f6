"""The training stack behind main.py, one job per module.

- ``training.checks``: options checked against each other, the registries, the machine, the data.
- ``training.build``: a run's spec -> its data, network, criterion, DAS, optimizer (``Training``).
- ``training.loop``: one epoch of training steps, evaluation, the metrics.csv row.
- ``training.resume``: the checkpoint format and ``--resume``.
- ``training.stops``: how a run ends early (signals, dead loader workers, non-finite values).
"""
