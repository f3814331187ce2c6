"""What every command shares once its config is parsed: exit codes for expected failures, and a prompt exit.

Plain Python: no torch, no Ray. The parsing itself is ``mlp.options``.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, Callable, NoReturn

from mlp.config import ConfigError


class CommandError(Exception):
    """A failure a command expects and reports as it is: one stderr line per problem, then ``exit_code``.

    The platform's refusals subclass it (a preflight that fails, a run another process
    is training, a dataset that is nowhere), so this module needs to know none of them.
    """

    exit_code = 1
    label = "error: "

    def lines(self) -> list[str]:
        return [str(self)]


class RunInterrupted(CommandError, RuntimeError):
    """A run or sweep stopped before it finished; the message says how to resume it."""

    exit_code = 130
    label = ""


def run_command(prog: str, action: Callable[[], Any]) -> int:
    """Run a command's body and map the expected failures to stderr lines and an exit code.

    2: a config error found late (e.g. a search space) or a request the cluster cannot
    run (one line per problem); 1: no dataset, or the run is being trained by another
    live process; 130: interrupted. Shared by every command so they fail the same way.
    """
    try:
        action()
    except ConfigError as err:
        print(f"{prog}: error: config {err.key}: {err.message}", file=sys.stderr)
        return 2
    except CommandError as err:
        for line in err.lines():
            print(f"{prog}: {err.label}{line}", file=sys.stderr)
        return err.exit_code
    return 0


def exit_now(code: int) -> NoReturn:
    """End a console script that has finished its work, skipping the interpreter's teardown.

    Why: with torch, Ray and pyarrow loaded, CPython's own finalisation (freeing
    every module) takes a while (BENCHMARKS.md) after the result is already
    printed. Everything a normal exit does for the user still happens here, in
    the same order: other non-daemon threads are joined, ``atexit`` handlers run
    (Ray's shutdown and logging's flush among them), and stdout/stderr are
    flushed; only then does ``os._exit`` end the process. Console scripts call
    it (through :func:`console_script`); tests call ``main()`` and never reach it.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or a pipe whose reader has gone
                pass
        os._exit(code)


def console_script(main: Callable[[], int]) -> Callable[[], NoReturn]:
    """The entry point ``pyproject.toml`` names for a command: ``main()``, then :func:`exit_now`."""

    def cli() -> NoReturn:
        exit_now(main())

    cli.__doc__ = f"The console script of {main.__module__}: main(), then a prompt exit (mlp.console.exit_now)."
    return cli
