"""``mlp sweep`` (also ``mlp-sweep``, ``python -m tune.sweep``): search the MLP's hyperparameters with Ray Tune.

Parses the config and the command's own flags, then runs ``tune.tuner``: the sweep,
its table and plots, and the promotion of the winner.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

from mlp.console import console_script, run_command
from mlp.options import make_parser, parse_config


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser(
        "mlp-sweep",
        "Sweep the MLP's hyperparameters with Ray Tune (ASHA early stopping) and promote the best model.\n"
        "Space specs by dotted key: choice:A,B,C | uniform:LO:HI | loguniform:LO:HI | randint:LO:HI |\n"
        "lograndint:LO:HI (add :N for --tune.search grid), e.g. --tune.space.optim.lr loguniform:1e-3:0.5.\n"
        "Joins RAY_ADDRESS (or the cluster of a `ray job submit`) if set, else starts a local cluster.\n"
        "Re-running with the same --run.name resumes an interrupted sweep.",
        sections=("tune", "model", "optim", "data", "train", "scaling", "run", "registry", "track"),
    )
    parser.add_argument("--resume", action="store_true", help="same as --tune.resume true")
    parser.add_argument("--no-promote", action="store_true", help="do not copy the winner into the registry")
    parser.add_argument("--promote-only", action="store_true",
                        help="promote the winner of the finished sweep --run.name again, without training")
    cfg, args = parse_config(parser, argv)
    if args.resume:
        cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, resume=True))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tune.tuner import check_space, promote_finished, run_sweep  # Ray and torch: after --help and bad options

    def sweep() -> None:
        check_space(cfg)
        if args.promote_only:
            promote_finished(cfg)
        else:
            run_sweep(cfg, promote=not args.no_promote)

    return run_command(parser.prog, sweep)


cli = console_script(main)


if __name__ == "__main__":
    cli()
