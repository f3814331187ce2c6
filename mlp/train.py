"""``mlp train`` (also ``mlp-train``, ``python -m mlp.train``): train the MLP data-parallel on Ray Train.

Parses the config (``--help`` and a bad option load neither torch nor Ray), runs ``mlp.distributed.run.run_training`` and prints its summary;
the work itself is library code that the sweep and the pipeline share.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from mlp.console import console_script, run_command
from mlp.options import make_parser, parse_config


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser(
        "mlp-train",
        "Train the MNIST MLP (784-100-10, SGD) data-parallel with Ray Train.\n"
        "Joins RAY_ADDRESS (or the cluster of a `ray job submit`) if set, else starts a local cluster.\n"
        "Re-running with the same --run.name resumes from the last checkpoint.",
        sections=("model", "optim", "data", "train", "scaling", "run", "registry", "track"),
    )
    parser.add_argument("--promote", action="store_true", help="copy the result into the model registry")
    cfg, args = parse_config(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mlp.distributed.run import print_summary, run_training  # torch and Ray: after --help and bad options

    return run_command(parser.prog, lambda: print_summary(run_training(cfg, promote=args.promote)))


cli = console_script(main)


if __name__ == "__main__":
    cli()
