"""Ray Serve HTTP inference for promoted models."""
