"""Training-time modules that are neither a criterion nor a miner (published ``modules/``)."""
