"""Hyperparameter sweeps with Ray Tune around mlp's trainer.

``sweep`` is the command (``mlp sweep``); ``tuner`` is the sweep as a library (the
Tuner, its searcher and scheduler, resume, the finished table); ``space`` parses and
validates the search space; ``trial`` is what one trial runs (mlp's loop in-process,
or mlp's TorchTrainer) and how many fit the cluster; ``release`` frees the workers of
stopped TorchTrainer trials; ``sweep_report`` and ``plots`` write the ranked table and
PNGs; ``promote`` copies the winner into mlp's model registry.
"""
