r"""Will the step fit? Compile the train (and a decode) step ahead of time for a slice,
from the same config as training (MaxText's train_compile idea).

    prefix-jax aot --config configs/e2e.py:method=prefix --topology v5e-256 \
        --config.model=llama-3-8b --config.batch_size=256 --config.remat=full \
        --config.param_dtype=bfloat16 --config.dtype=bfloat16 \
        --config.mesh='(("data",1),("fsdp",-1),("tensor",1))' --seq 2048

With `--serve-slots 64 256 --serve-max-len 4096` it compiles the serving engine's generate
step instead (one row per slot count; the mesh should be tensor-parallel, e.g.
`--config.mesh='(("data",1),("fsdp",1),("tensor",8))'`), see docs/serving.md.

The config gives the model (a public architecture or an HF `config.json`; no weights are
read), method, batch size, mesh, remat, dtypes and attention kernel; the flags below give
what training reads from its data (the sequence lengths) and the decode step's shape. Prints
per-chip memory and FLOPs against the chip's HBM and the analytic floor
(`prefix_jax.scale.aot.table`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from prefix_jax.cli.config_args import add_config_argument, parse_with_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument(
        "--topology", required=True, help="TPU slice (v5e-256, v5p-128, ...) or cpu-N"
    )
    parser.add_argument("--seq", type=int, default=2048, help="train sequence (source) length")
    parser.add_argument(
        "--target-seq", type=int, default=0, help="encoder-decoders: target length (0: --seq)"
    )
    parser.add_argument(
        "--no-train", action="store_true", help="skip the train step (only the decode step)"
    )
    parser.add_argument("--decode-batch", type=int, default=0, help="also compile a decode step")
    parser.add_argument("--cache-length", type=int, default=2048)
    serve = parser.add_argument_group("serving engine: its generate step instead")
    serve.add_argument("--serve-slots", type=int, nargs="+", metavar="S", help="slot counts")
    serve.add_argument("--serve-max-len", type=int, default=4096, help="tokens per slot")
    serve.add_argument("--prefix-capacity", type=int, default=16, help="prefix table entries")
    serve.add_argument("--prefix-max-length", type=int, default=64, help="tokens per entry")
    parser.add_argument("--json", type=Path, help="append each result as a JSON line")
    parser.add_argument(
        "--no-constraints",
        action="store_true",
        help="train step without activation sharding constraints (for comparison)",
    )
    args, config = parse_with_config(parser, argv)
    if args.serve_slots and args.decode_batch:
        parser.error("--serve-slots compiles the serving step alone: drop --decode-batch")
    if args.no_train and not args.decode_batch and not args.serve_slots:
        parser.error("--no-train leaves nothing to compile: give --decode-batch")

    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only use of libtpu
    import jax

    if args.topology.startswith("cpu-"):
        jax.config.update("jax_num_cpu_devices", int(args.topology[4:]))
        jax.config.update("jax_platforms", "cpu")
    from prefix_jax.scale.aot.table import fit_table, serve_table

    try:
        if args.serve_slots:
            serve_table(
                config,
                args.topology,
                args.serve_slots,
                max_len=args.serve_max_len,
                prefix_capacity=args.prefix_capacity,
                prefix_max_length=args.prefix_max_length,
                json_path=args.json,
            )
            return 0
        fit_table(
            config,
            args.topology,
            seq=args.seq,
            target_seq=args.target_seq,
            train=not args.no_train,
            decode_batch=args.decode_batch,
            cache_length=args.cache_length,
            constrain=not args.no_constraints,
            json_path=args.json,
        )
    except ValueError as e:
        parser.exit(2, f"prefix-jax aot: {e}\n")
    return 0
