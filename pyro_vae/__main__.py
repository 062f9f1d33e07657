"""``python -m pyro_vae train|evaluate|pictures|benchmark|reproduce [flags]``: the five commands in one entry point."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

COMMANDS = ("train", "evaluate", "pictures", "benchmark", "reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    from pyro_vae import cli
    from pyro_vae.errors import stdout_gone

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        usage = f"usage: python -m pyro_vae {{{','.join(COMMANDS)}}} [flags]; add --help after a command for its flags"
        # asked for (--help): standard output, exit 0; no command at all: a usage error, stderr and exit 2
        try:
            print(usage, file=sys.stdout if args else sys.stderr, flush=True)
        except BrokenPipeError:
            stdout_gone()
            return 1
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone says it
            print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    entry = {
        "train": cli.train_main,
        "evaluate": cli.evaluate_main,
        "pictures": cli.pictures_main,
        "benchmark": cli.benchmark_main,
        "reproduce": cli.reproduce_main,
    }[command]
    return entry(rest)


if __name__ == "__main__":
    raise SystemExit(main())
