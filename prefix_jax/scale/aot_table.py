"""Will the step fit? Compile the train step (and a decode step) ahead of time for a slice.

    python -m prefix_jax.scale.aot_table --model llama-3-8b --topology v5e-256 \\
        --mesh '(("data",1),("fsdp",-1),("tensor",1))' --batch 256 --seq 2048 --remat full

`--attention` picks the kernel (default `auto`: splash on a TPU topology; on CPU devices
flash, or xla for short rows; `xla` is the dense reference that keeps [batch, heads, T,
p + T] scores).
`--model` is a public architecture (`llama-3-8b`, `llama-3-70b`, `smollm2-135m`,
`phi-3-mini-4k`; encoder-decoders `bart-large`, `t5-base`, `flan-t5-base`) or an HF
`config.json` (or its directory); no weights are read. For an encoder-decoder `--seq` is the
source length and `--target-seq` the target length, and the prefix is Li & Liang's three
(encoder, decoder, cross-attention), each `--prefix-length` long. `--topology` is a TPU slice
(`v5e-256`, `v5p-256`, ...; needs libtpu: `pip install -e '.[tpu]'`) or `cpu-N` (N
simulated CPU devices). `--decode-batch B --cache-length S` also compiles one greedy
decode step with an S-token cache (plus the prefix; for an encoder-decoder S target slots
beside the cross keys/values of `--seq` encoded source tokens and the cross prefix).
Prints per-chip memory from XLA's `memory_analysis()` (arguments, temporaries, total)
against the chip's HBM and the analytic floor (`prefix_jax.scale.aot.train_floor`), the analytic
FLOPs per chip (`prefix_jax.scale.aot.train_flops`) and XLA's compiled count beside them (XLA
counts the body of the layer scan once, so its number is about one layer's share);
`--json FILE` appends each row as a JSON line.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import time
from pathlib import Path

import ml_collections

from configs.base import get_base_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--topology", required=True)
    parser.add_argument("--mesh", default='(("data",1),("fsdp",-1),("tensor",1))')
    parser.add_argument("--batch", type=int, default=0, help="global train batch (0: skip)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument(
        "--target-seq", type=int, default=0, help="encoder-decoders: target length (0: --seq)"
    )
    parser.add_argument("--method", default="prefix", choices=("prefix", "prompt", "lora", "full"))
    parser.add_argument("--prefix-length", type=int, default=10)
    parser.add_argument("--reparam", default="mlp", choices=("mlp", "none"))
    parser.add_argument("--top-layers", type=int, default=0, help="full: train only the last k")
    parser.add_argument("--remat", default="full", help="full|dots|dots_no_batch|nothing|none")
    parser.add_argument("--dtype", default="bfloat16", help="weights and compute dtype")
    parser.add_argument(
        "--attention",
        default="auto",
        choices=("auto", "xla", "flash", "splash", "cudnn"),
        help="attention kernel (auto: splash on TPU; elsewhere flash, or xla for short rows)",
    )
    parser.add_argument("--decode-batch", type=int, default=0)
    parser.add_argument("--cache-length", type=int, default=2048)
    parser.add_argument("--json", type=Path, help="append each result as a JSON line")
    parser.add_argument(
        "--no-constraints",
        action="store_true",
        help="train step without activation sharding constraints (for comparison)",
    )
    args = parser.parse_args(argv)
    try:
        args.mesh = [(str(n), int(s)) for n, s in ast.literal_eval(args.mesh)]
    except (ValueError, SyntaxError, TypeError) as e:
        parser.error(f'--mesh must look like \'(("data",1),("fsdp",-1))\': {e}')
    if not args.batch and not args.decode_batch:
        parser.error("give --batch (train step) and/or --decode-batch (decode step)")
    return args


def method_config(
    method: str, prefix_length: int = 10, reparam: str = "mlp", top_layers: int = 0
) -> ml_collections.ConfigDict:
    """The experiment config `train` would use (configs/base.py) for `method`.

    Prefix and prompt get `prefix_length` virtual tokens; the prefix starts random (an
    activation init needs weights, and does not change the step).
    """
    c = get_base_config()
    c.method = method
    c.prefix.update({"length": prefix_length, "reparam": reparam, "init": "random"})
    c.prompt.length = prefix_length
    c.finetune.top_layers = top_layers
    return c


def gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only use of libtpu
    import jax

    if args.topology.startswith("cpu-"):
        jax.config.update("jax_num_cpu_devices", int(args.topology[4:]))
        jax.config.update("jax_platforms", "cpu")
    from prefix_jax.models.attention import resolve as resolve_attention
    from prefix_jax.models.catalog import model_config
    from prefix_jax.models.seq2seq_config import Seq2SeqConfig
    from prefix_jax.scale import aot, sharding
    from prefix_jax.train.assemble import dtype

    config = model_config(args.model)
    seq2seq = isinstance(config, Seq2SeqConfig)
    target_seq = args.target_seq or args.seq
    topo = aot.topology(args.topology)
    mesh = sharding.make_mesh(args.mesh, aot.devices(topo))
    mesh_shape = dict(mesh.shape)
    remat = None if args.remat == "none" else args.remat
    dt = dtype(args.dtype)
    dtype_bytes = jax.numpy.dtype(dt).itemsize
    hbm = topo.hbm_bytes
    platform = mesh.devices.flat[0].platform
    scores = args.seq * (args.seq + (args.prefix_length if args.method == "prefix" else 0))
    attention = resolve_attention(args.attention, platform, scores=scores)
    if args.no_constraints and attention == "splash" and args.batch:
        raise SystemExit(
            "splash attention runs per device under shard_map, which needs the activation "
            "constraints: with --no-constraints use --attention xla or flash"
        )
    print(
        f"{config.name}: {config.num_params() / 1e9:.2f}B params; {topo.name} "
        f"({topo.chips} chips, HBM {gib(hbm) + ' GiB' if hbm else 'n/a'}); mesh {mesh_shape}; "
        f"attention {attention}"
    )
    print(
        "| step | method | batch x len | remat | args GiB | temps GiB | total GiB | "
        "floor GiB | total / floor | HBM GiB | fits | TFLOP/chip | XLA TFLOP/chip | compile s |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    rows = []
    if args.batch:
        settings = method_config(args.method, args.prefix_length, args.reparam, args.top_layers)
        start = time.perf_counter()
        fit = aot.compile_train_step(
            config, mesh, args.batch, args.seq, settings,
            param_dtype=dt, dtype=dt, remat_policy=remat,
            constrain_activations=not args.no_constraints, attention=args.attention,
            target_length=target_seq if seq2seq else None,
        )  # fmt: skip
        p = args.prefix_length if args.method == "prefix" else 0
        if seq2seq:
            floor = aot.seq2seq_train_floor(
                config, mesh_shape, args.batch, args.seq, target_seq,
                trainable_state_bytes=fit.trainable_state_bytes, prefix_length=p,
                dtype_bytes=dtype_bytes, dense_attention=attention == "xla",
            )  # fmt: skip
            flops = aot.seq2seq_train_flops(
                config, args.batch, args.seq, target_seq, prefix_length=p,
                remat=args.remat == "full", method=args.method,
            )  # fmt: skip
        else:
            floor = aot.train_floor(
                config, mesh_shape, args.batch, args.seq,
                trainable_state_bytes=fit.trainable_state_bytes, prefix_length=p,
                dtype_bytes=dtype_bytes, dense_attention=attention == "xla",
            )  # fmt: skip
            flops = aot.train_flops(
                config, args.method, args.batch, args.seq,
                virtual_tokens=args.prefix_length, remat=args.remat == "full",
            )  # fmt: skip
        rows.append(
            Row("train", args.method, args.batch, args.seq, args.remat, fit, floor, flops,
                time.perf_counter() - start)
        )  # fmt: skip
    if args.decode_batch:
        start = time.perf_counter()
        p, batch, cache = args.prefix_length, args.decode_batch, args.cache_length
        if seq2seq:
            fit = aot.compile_seq2seq_decode_step(
                config, mesh, batch, cache, args.seq,
                prefix_length=p, param_dtype=dt, dtype=dt, attention=args.attention,
            )  # fmt: skip
            floor = aot.seq2seq_decode_floor(
                config, mesh_shape, batch, cache, args.seq,
                prefix_length=p, dtype_bytes=dtype_bytes,
            )  # fmt: skip
            flops = aot.seq2seq_decode_flops(config, batch, p + cache, p + args.seq)
        else:
            fit = aot.compile_decode_step(
                config, mesh, batch, cache,
                prefix_length=p, param_dtype=dt, dtype=dt, attention=args.attention,
            )  # fmt: skip
            floor = aot.decode_floor(
                config, mesh_shape, batch, cache, prefix_length=p, dtype_bytes=dtype_bytes
            )
            flops = aot.decode_flops(config, batch, p + cache)
        rows.append(
            Row("decode", "prefix", batch, cache, "-", fit, floor, flops,
                time.perf_counter() - start)
        )  # fmt: skip
    for row in rows:
        print(row.markdown(hbm, topo.chips))
        print("  floor: " + ", ".join(f"{k} {gib(v)}" for k, v in row.floor.items()))
        if args.json:
            record = {
                "model": config.name,
                "topology": topo.name,
                "mesh": mesh_shape,
                "constrained": not args.no_constraints,
                "dtype": args.dtype,
                "attention": attention,
                "hbm_bytes": hbm,
                **row.record(topo.chips),
            }
            with args.json.open("a") as f:
                f.write(json.dumps(record) + "\n")


@dataclasses.dataclass(frozen=True)
class Row:
    """One compiled step and what it is compared with."""

    step: str
    method: str
    batch: int
    length: int
    remat: str
    fit: object  # prefix_jax.scale.aot.Fit
    floor: dict[str, float]
    flops: float  # analytic, all chips
    seconds: float

    def markdown(self, hbm: int | None, chips: int) -> str:
        fit, floor = self.fit, sum(self.floor.values())
        fits = "n/a" if hbm is None else ("yes" if fit.memory and fit.total <= hbm else "NO")
        if fit.memory:
            m = fit.memory
            args, temps, total, xla = gib(m.arguments), gib(m.temporaries), gib(m.total), m.flops
        else:  # refused by the compiler: the temporaries it named are a lower bound
            args, temps = "?", f">= {gib(fit.refused_temporaries)}"
            total, xla = temps, float("nan")
        return (
            f"| {self.step} | {self.method} | {self.batch} x {self.length} | {self.remat} | "
            f"{args} | {temps} | {total} | {gib(floor)} | {fit.total / floor:.2f} | "
            f"{gib(hbm) if hbm else 'n/a'} | {fits} | {self.flops / chips / 1e12:.2f} | "
            f"{xla / 1e12:.2f} | {self.seconds:.0f} |"
        )

    def record(self, chips: int) -> dict:
        fit = self.fit
        memory = (
            {f"{k}_bytes": v for k, v in dataclasses.asdict(fit.memory).items()}
            if fit.memory
            else {"temporaries_bytes": fit.refused_temporaries}
        )
        return {
            "step": self.step,
            "method": self.method,
            "batch": self.batch,
            "length": self.length,
            "remat": self.remat,
            "refused": fit.memory is None,
            **memory,
            "total_bytes": fit.total,
            "floor_bytes": sum(self.floor.values()),
            "floor": self.floor,
            "flops_per_chip": self.flops / chips,
            "compile_s": self.seconds,
        }


if __name__ == "__main__":
    main()
