"""Hyperparameter sweeps with Ray Tune around mlp's trainer (see issue: tune)."""
