"""Hyperparameter sweeps with Ray Tune around mlp's trainer.

``sweep`` is the CLI and driver; ``space`` parses and validates the search space;
``trial`` is what one trial runs (mlp's loop in-process, or mlp's TorchTrainer) and
how many fit the cluster; ``release`` frees the workers of stopped TorchTrainer
trials; ``report`` and ``plots`` write the ranked table and PNGs; ``promote``
copies the winner into mlp's model registry.
"""
