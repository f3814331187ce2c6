"""Entry points that run the stages on a cluster: pipeline, presets, manifests."""
