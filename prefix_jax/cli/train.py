r"""Train a method (prefix-tuning by default) from a config file; rerunning resumes.

    prefix-jax train --config configs/e2e.py:method=lora,local --workdir runs/x \
        [--config.optim.learning_rate=1e-3 ...]

Multi-host: `--distributed` on a TPU pod (JAX finds its peers), or `--coordinator HOST:PORT
--num-processes N --process-id I` elsewhere; see `prefix_jax.train.loop.train` for what
the workdir receives.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from prefix_jax.cli.config_args import add_config_argument, parse_with_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--workdir", required=True, help="run directory (resumes a run in it)")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize (TPU pods need no other flag)",
    )
    parser.add_argument("--coordinator", help="host:port of process 0 (multi-host)")
    parser.add_argument("--num-processes", "--num_processes", type=int, help="process count")
    parser.add_argument("--process-id", "--process_id", type=int, help="this process's index")
    args, config = parse_with_config(parser, argv)
    config.lock()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from prefix_jax.data import DataError
    from prefix_jax.scale import sharding
    from prefix_jax.train.loop import train

    if args.distributed or args.coordinator:
        sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    try:
        summary = train(config, args.workdir)
    except DataError as err:  # one line naming the file or dataset, not a traceback
        print(f"prefix-jax train: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
