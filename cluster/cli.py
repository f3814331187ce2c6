"""``mlp``: one command for the whole life cycle, with a subcommand per stage.

    mlp train | sweep | serve | client | predict | pipeline | registry  [options]
    mlp <subcommand> --help

Each subcommand is the ``main()`` of its own entry-point module, found by name
the way a console script is, so this module imports none of them: ``mlp --help``
stays instant, and a subcommand loads only what it needs. The older console
scripts (``mlp-train``, ``mlp-sweep``, ...) remain as aliases of the same mains.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import NoReturn, Optional, Sequence

from mlp.console import exit_now


@dataclass(frozen=True)
class Subcommand:
    module: str  # the entry-point module whose main(argv) runs it
    summary: str
    prompt_exit: bool = True  # end through mlp.console.exit_now, as its console script does


SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand("mlp.train", "train the MLP data-parallel with Ray Train (resumable, --promote)"),
    "sweep": Subcommand("tune.sweep", "search hyperparameters with Ray Tune and promote the best model"),
    "serve": Subcommand("serve.__main__", "serve a promoted model over HTTP with Ray Serve", prompt_exit=False),
    "client": Subcommand("serve.client", "talk to a running endpoint: predict, score, health", prompt_exit=False),
    "predict": Subcommand("serve.predict", "score a table or a folder of images with a promoted model (Ray Data)"),
    "pipeline": Subcommand("cluster.pipeline", "sweep, promote, serve and verify in one command"),
    "registry": Subcommand("mlp.registry.cli", "list, show, promote, alias and roll back model versions"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: mlp <subcommand> [options]   (mlp <subcommand> --help lists its options)", "",
             "The MNIST MLP on Ray: train, sweep, serve, and run it all on a cluster.", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {sub.summary}" for name, sub in SUBCOMMANDS.items()]
    lines += ["", "Each is also a console script of its own: mlp-train, mlp-sweep, mlp-serve, mlp-client, "
                  "mlp-predict, mlp-pipeline, mlp-registry."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``argv[0]``'s subcommand with the rest of ``argv``; 2 with the usage for an unknown one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    sub = SUBCOMMANDS.get(args[0])
    if sub is None:
        print(f"mlp: error: unknown subcommand {args[0]!r}; choose one of {', '.join(SUBCOMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    return importlib.import_module(sub.module).main(args[1:])


def cli() -> NoReturn:
    """The ``mlp`` console script: the subcommand's main, then the exit its own console script makes."""
    args = sys.argv[1:]
    code = main(args)
    sub = SUBCOMMANDS.get(args[0]) if args else None
    if sub is not None and sub.prompt_exit:
        exit_now(code)
    raise SystemExit(code)

if __name__ == "__main__":
    cli()
