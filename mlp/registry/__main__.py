"""``python -m mlp.registry``: the same command as ``mlp registry`` and ``mlp-registry``."""

from mlp.registry.cli import cli

if __name__ == "__main__":
    cli()
