"""The ``eqdeq`` command: a subcommand, then that command's own command line.

Each command is a module of :mod:`eqdeq_cli.commands` with ``main(argv) -> exit status``,
imported only when used. ``train``, ``eval`` and ``analyze`` are Hydra apps: everything
after the subcommand is Hydra's command line, so ``--help``, ``--cfg job``, ``-m`` and
``-sc`` (shell completion) work as in any Hydra app.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

#: Commands whose line completion is Hydra's (``eqdeq train -sc install=bash``).
HYDRA_COMMANDS = {
    "train": "train a DEQ reconstructor (eqdeq train [group=option ...] [key=value ...])",
    "eval": "evaluate a checkpoint (eqdeq eval ckpt=PATH [overrides])",
}
#: Every command: its module and its line in ``eqdeq --help``.
COMMANDS = {
    "train": ("eqdeq_cli.commands.train", HYDRA_COMMANDS["train"]),
    "eval": ("eqdeq_cli.commands.eval", HYDRA_COMMANDS["eval"]),
    "collect": ("eqdeq_cli.commands.collect", "tabulate the metrics of a sweep directory (eqdeq collect DIR)"),
    "analyze": ("eqdeq_cli.commands.analyze", "analyse a trained model: equivariance, Jacobian symmetry, contraction, where the error lies (eqdeq analyze ckpt=PATH)"),
}

USAGE = """usage: eqdeq <command> [arguments]

Train deep equilibrium models for imaging inverse problems without ground truth.

commands:
{commands}

Each command takes --help. train, eval and analyze take Hydra overrides, e.g.
  eqdeq train physics=ct grad=implicit
  eqdeq train -m grad=implicit,jfb seed=0,1
  eqdeq train --cfg job          (print the composed config and exit)
  eqdeq eval ckpt=outputs/train/<run>/checkpoints/best.pt
Shell completion (bash): eval "$(eqdeq train -sc install=bash)"
"""


def _usage() -> str:
    return USAGE.format(commands="\n".join(f"  {name:<9}{text}" for name, (_, text) in COMMANDS.items()))


def _run(command: str, args: Sequence[str], prog: str | None = None) -> int:
    """Run ``command``'s ``main`` on ``args`` (``prog``: the program name Hydra shows)."""
    module_name = COMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        sys.stderr.write(f"eqdeq: error: the '{command}' command is not available in this installation "
                         f"({module_name} is missing)\n")
        return 2
    main_args = (list(args),) if prog is None else (list(args), prog)
    return int(module.main(*main_args) or 0)


def _completion_query(prog: str, args: Sequence[str]) -> int:
    """Answer a shell-completion query (``eqdeq -sc query=bash`` with ``COMP_LINE`` set).

    The installed bash function calls the program without the subcommand; the
    subcommand is read from ``COMP_LINE`` and stripped before Hydra sees the line.
    """
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    typing_command = len(words) < 2 or (len(words) == 2 and not line.endswith(" "))
    if typing_command:
        prefix = words[1] if len(words) == 2 else ""
        names = [c for c in COMMANDS if c.startswith(prefix)]
        sys.stdout.write(" ".join(names) + "\n")
        return 0
    if words[1] not in HYDRA_COMMANDS:
        return 0
    os.environ["COMP_LINE"] = line.replace(words[1], "", 1)
    return _run(words[1], args, prog)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eqdeq`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) or "eqdeq"
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("-sc", "--shell-completion") or command.startswith("--shell-completion="):
        return _completion_query(prog, args) if any("query=" in a for a in args) else _run("train", args, prog)
    if command in HYDRA_COMMANDS:
        return _run(command, rest, prog)
    if command in COMMANDS:
        return _run(command, rest)
    sys.stderr.write(f"eqdeq: error: unknown command {command!r}; valid commands: "
                     f"{', '.join(COMMANDS)} (see eqdeq --help)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
