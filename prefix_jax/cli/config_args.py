"""`--config path[:args]` and `--config.key=value` on a command's argparse parser: the one
config convention of `train` and `aot` (the parsing itself is `prefix_jax.config.parse`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import ml_collections

from prefix_jax.config.parse import ConfigError, apply_overrides, load_config, split_overrides


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """`--config path[:args]`, documented with the override convention."""
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE[:ARGS]",
        help="config file and its arguments, e.g. configs/e2e.py:method=lora,local; "
        "override any field with --config.KEY=VALUE (e.g. --config.optim.learning_rate=1e-3)",
    )


def parse_with_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    """Parse `argv` with `parser` (which has `add_config_argument`) and build the config:
    the file, then the overrides in order. Any config problem is a parser error."""
    try:
        rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        parser.error(str(e))
    args = parser.parse_args(rest)
    try:
        config = apply_overrides(load_config(args.config), overrides)
    except ValueError as e:  # ConfigError, or a get_config that rejects its argument
        parser.error(str(e))
    return args, config
