"""MLP on Ray: config, model, data, training loop, checkpoints, registry, and the Ray Train wrapper."""
