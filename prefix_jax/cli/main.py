"""`prefix-jax <command> ...`: one console script, a thin subcommand per job.

Each command is the module `prefix_jax.cli.<command>` with `main(argv) -> int`; this file
only picks it, so `prefix-jax --help` lists every command without importing JAX.
`python -m prefix_jax.cli <command>` is the same program (for subprocesses that must use
the current interpreter).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from prefix_jax.cli.accelerator import quiet_libtpu_without_tpu

COMMANDS = {
    "train": "train a method from a config file (resumes a workdir)",
    "evaluate": "decode and score a split or data file with a finished run",
    "generate": "greedy generation from prompts on the command line",
    "serve": "batch inference: JSON-lines requests, many prefixes on one base model",
    "demo": "prefix-tune SmolLM2 on E2E for a few minutes and score it",
    "aot": "will the step fit? compile train/decode steps for a TPU or CPU topology",
    "launch": "run (or print) every trial of a sweep",
    "report": "tables, plots and contrasts of a sweep's workdir",
    "archive": "pack a sweep's small result files into a tar.gz",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, about in COMMANDS.items()]
    return (
        "usage: prefix-jax <command> [args...]   (prefix-jax <command> --help for its flags)\n\n"
        "commands:\n" + "\n".join(lines)
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"prefix-jax: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    quiet_libtpu_without_tpu()
    module = importlib.import_module(f"prefix_jax.cli.{command}")
    sys.argv[0] = f"prefix-jax {command}"  # argparse's prog in usage and errors
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
