"""Will the step fit? Compile the train step (and a decode step) ahead of time for a slice,
and print the table of per-chip memory and FLOPs (`fit_table`; the command line is
`prefix-jax aot`, `prefix_jax.cli.aot`, which takes the same config as training).

The experiment config gives the model (`model`: a public architecture such as
`llama-3-8b`, `llama-3-70b`, `smollm2-135m`, `phi-3-mini-4k`, the encoder-decoders
`bart-large`, `t5-base`, `flan-t5-base`, or an HF `config.json` or its directory; no weights
are read), the method and its block, `batch_size`, `mesh`, `remat`, `param_dtype`, `dtype`
and `attention` (`auto`: splash on a TPU topology; on CPU devices flash, or xla for short
rows; `xla` is the dense reference that keeps [batch, heads, T, p + T] scores). The prefix
starts random (an activation init needs weights and does not change the step). For an
encoder-decoder `seq` is the source length and `target_seq` the target length, and the
prefix is Li & Liang's three (encoder, decoder, cross-attention). The topology is a TPU
slice (`v5e-256`, `v5p-256`, ...; needs libtpu: `pip install -e '.[tpu]'`) or `cpu-N` (N
simulated CPU devices). `decode_batch` B with `cache_length` S also compiles one greedy
decode step with an S-token cache (plus the prefix; for an encoder-decoder S target slots
beside the cross keys/values of `seq` encoded source tokens and the cross prefix).
Prints per-chip memory from XLA's `memory_analysis()` (arguments, temporaries, total)
against the chip's HBM and the analytic floor (`prefix_jax.scale.aot.train_floor`), the
analytic FLOPs per chip (`prefix_jax.scale.aot.train_flops`) and XLA's compiled count beside
them (XLA counts the body of the layer scan once, so its number is about one layer's
share); with `json_path` each row is also appended as a JSON line.

`serve_table` prints the serving engine's generate step instead, from the same config's
model, mesh and dtypes, one row per slot count.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from prefix_jax.config.defaults import get_base_config


def method_config(
    method: str, prefix_length: int = 10, reparam: str = "mlp", top_layers: int = 0
) -> ml_collections.ConfigDict:
    """The experiment config `train` would use (the library defaults) for `method`.

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


def fit_table(
    config: ml_collections.ConfigDict,
    topology: str,
    *,
    seq: int = 2048,
    target_seq: int = 0,
    train: bool = True,
    decode_batch: int = 0,
    cache_length: int = 2048,
    constrain: bool = True,
    json_path: str | Path | None = None,
) -> list[Row]:
    """Compile `config`'s train step (global batch `config.batch_size` x `seq`; unless
    `train` is false) and, with `decode_batch`, one decode step for `topology`; print the
    table and return its rows. A `cpu-N` topology needs N CPU devices set before JAX
    starts (`jax_num_cpu_devices`)."""
    import jax

    from prefix_jax.methods import registry
    from prefix_jax.models.attention import resolve as resolve_attention
    from prefix_jax.models.catalog import model_config
    from prefix_jax.models.seq2seq_config import Seq2SeqConfig
    from prefix_jax.scale import aot, sharding
    from prefix_jax.train.assemble import dtype

    if not train and not decode_batch:
        raise ValueError("nothing to compile: give the train step and/or a decode batch")
    settings = ml_collections.ConfigDict(config.to_dict())
    settings.prefix.init = "random"
    method = settings.method
    key_positions = registry.get(method).extra_key_positions(settings)  # a prefix's
    prefix_length = settings.prefix.length
    remat_label = settings.remat or "none"
    model = model_config(settings.model)
    seq2seq = isinstance(model, Seq2SeqConfig)
    target_seq = target_seq or seq
    topo = aot.topology(topology)
    mesh = sharding.make_mesh([tuple(axis) for axis in settings.mesh], aot.devices(topo))
    mesh_shape = dict(mesh.shape)
    remat = settings.remat or None
    param_dt, dt = dtype(settings.param_dtype), dtype(settings.dtype)
    dtype_bytes = jax.numpy.dtype(dt).itemsize
    hbm = topo.hbm_bytes
    platform = mesh.devices.flat[0].platform
    scores = seq * (seq + key_positions)
    attention = resolve_attention(settings.attention, platform, scores=scores)
    if not constrain and attention == "splash" and train:
        raise ValueError(
            "splash attention runs per device under shard_map, which needs the activation "
            "constraints: without them use attention xla or flash"
        )
    print(
        f"{model.name}: {model.num_params() / 1e9:.2f}B params; {topo.name} "
        f"({topo.chips} chips, HBM {gib(hbm) + ' GiB' if hbm else 'n/a'}); mesh {mesh_shape}; "
        f"attention {attention}"
    )
    print(
        "| step | method | batch x len | remat | args GiB | temps GiB | total GiB | "
        "floor GiB | total / floor | HBM GiB | fits | TFLOP/chip | XLA TFLOP/chip | compile s |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    rows = []
    if train:
        batch = settings.batch_size
        start = time.perf_counter()
        fit = aot.compile_train_step(
            model, mesh, batch, seq, settings,
            param_dtype=param_dt, dtype=dt, remat_policy=remat,
            constrain_activations=constrain, attention=settings.attention,
            target_length=target_seq if seq2seq else None,
        )  # fmt: skip
        p = key_positions
        floor = aot.train_floor(
            model, mesh_shape, batch, seq, target_length=target_seq if seq2seq else None,
            trainable_state_bytes=fit.trainable_state_bytes, prefix_length=p,
            dtype_bytes=dtype_bytes, dense_attention=attention == "xla",
        )  # fmt: skip
        flops = aot.train_flops(
            model, settings, batch, seq, target_length=target_seq if seq2seq else None,
            remat=remat == "full",
        )  # fmt: skip
        rows.append(
            Row("train", method, batch, seq, remat_label, fit, floor, flops,
                time.perf_counter() - start)
        )  # fmt: skip
    if decode_batch:
        start = time.perf_counter()
        p, batch, cache = prefix_length, decode_batch, cache_length
        source = seq if seq2seq else None
        fit = aot.compile_decode_step(
            model, mesh, batch, cache, source_length=source,
            prefix_length=p, param_dtype=param_dt, dtype=dt, attention=settings.attention,
        )  # fmt: skip
        floor = aot.decode_floor(
            model, mesh_shape, batch, cache, source_length=source,
            prefix_length=p, dtype_bytes=dtype_bytes,
        )  # fmt: skip
        flops = aot.decode_flops(model, batch, cache, source_length=source, prefix_length=p)
        rows.append(
            Row("decode", "prefix", batch, cache, "-", fit, floor, flops,
                time.perf_counter() - start)
        )  # fmt: skip
    for row in rows:
        print(row.markdown(hbm, topo.chips))
        print("  floor: " + ", ".join(f"{k} {gib(v)}" for k, v in row.floor.items()))
        if json_path:
            record = {
                "model": model.name,
                "topology": topo.name,
                "mesh": mesh_shape,
                "constrained": constrain,
                "dtype": settings.dtype,
                "attention": attention,
                "hbm_bytes": hbm,
                **row.record(topo.chips),
            }
            with Path(json_path).open("a") as f:
                f.write(json.dumps(record) + "\n")
    return rows


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


def serve_table(
    config: ml_collections.ConfigDict,
    topology: str,
    slots: Sequence[int],
    *,
    max_len: int = 4096,
    prefix_capacity: int = 16,
    prefix_max_length: int = 64,
    json_path: str | Path | None = None,
) -> list[dict]:
    """Compile the serving engine's generate step (`aot.compile_generate_step`) for each
    slot count in `slots`, with `max_len`-token slots, on `config`'s model, mesh and
    dtypes; print one row each (per-chip weights, cache and prefix table shares, XLA's
    arguments and temporaries, the total with the table, the floor
    `aot.generate_floor`) and return them as records."""
    import jax

    from prefix_jax.models.catalog import model_config
    from prefix_jax.scale import aot, sharding
    from prefix_jax.train.assemble import dtype

    model = model_config(config.model)
    topo = aot.topology(topology)
    mesh = sharding.make_mesh([tuple(axis) for axis in config.mesh], aot.devices(topo))
    mesh_shape, hbm = dict(mesh.shape), topo.hbm_bytes
    param_dt, dt = dtype(config.param_dtype), dtype(config.dtype)
    print(
        f"{model.name}: {model.num_params() / 1e9:.2f}B params, {model.num_kv_heads} kv heads; "
        f"{topo.name} ({topo.chips} chips, HBM {gib(hbm) + ' GiB' if hbm else 'n/a'}); "
        f"mesh {mesh_shape}; prefix table {prefix_capacity} x {prefix_max_length}"
    )
    print(
        "| step | slots x cache | weights GiB | cache GiB | table GiB | args GiB | temps GiB | "
        "total GiB | floor GiB | total / floor | HBM GiB | fits | compile s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    records = []
    for n in slots:
        start = time.perf_counter()
        served = aot.compile_generate_step(
            model, mesh, n, max_len, prefix_capacity=prefix_capacity,
            prefix_max_length=prefix_max_length, param_dtype=param_dt, dtype=dt,
            attention=config.attention,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        floor = aot.generate_floor(
            model, mesh_shape, n, max_len, prefix_capacity=prefix_capacity,
            prefix_max_length=prefix_max_length, dtype_bytes=jax.numpy.dtype(dt).itemsize,
        )  # fmt: skip
        m, total, floor_total = served.fit.memory, served.total, sum(floor.values())
        fits = "n/a" if hbm is None else ("yes" if m and total <= hbm else "NO")
        # A refusal names one size for the whole program (its arguments included): the
        # total is at least that, and what it is made of is unknown.
        args, temps = (gib(m.arguments), gib(m.temporaries)) if m else ("?", "?")
        shown = gib(total) if m else ">= " + gib(total)
        print(
            f"| generate | {n} x {max_len} | {gib(served.weights_bytes)} | "
            f"{gib(served.cache_bytes)} | {gib(served.table_bytes)} | {args} | {temps} | "
            f"{shown} | {gib(floor_total)} | {total / floor_total:.2f} | "
            f"{gib(hbm) if hbm else 'n/a'} | {fits} | {seconds:.0f} |"
        )
        print("  floor: " + ", ".join(f"{k} {gib(v)}" for k, v in floor.items()))
        record = {
            "step": "generate",
            "model": model.name,
            "topology": topo.name,
            "mesh": mesh_shape,
            "dtype": config.dtype,
            "hbm_bytes": hbm,
            "slots": n,
            "max_len": max_len,
            "prefix_capacity": prefix_capacity,
            "prefix_max_length": prefix_max_length,
            "refused": m is None,
            **({f"{k}_bytes": getattr(m, k) for k in _MEMORY_FIELDS} if m else {}),
            "weights_bytes": served.weights_bytes,
            "cache_bytes": served.cache_bytes,
            "table_bytes": served.table_bytes,
            "total_bytes": total,
            "floor_bytes": floor_total,
            "floor": floor,
            "compile_s": seconds,
        }
        records.append(record)
        if json_path:
            with Path(json_path).open("a") as f:
                f.write(json.dumps(record) + "\n")
    return records


_MEMORY_FIELDS = ("arguments", "outputs", "aliased", "temporaries", "code")
