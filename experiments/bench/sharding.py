"""SmolLM2 prefix-tuning step on simulated CPU devices: 1 device vs meshes of 8.

    python -m experiments.bench.sharding [--steps 5]

On one CPU, 8 simulated devices share the same cores, so this measures the overhead of
sharding (collectives, layout changes), not a speedup. Per-device memory comes from XLA's
compiled memory analysis (arguments + temporaries + outputs of the train step per device).
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.bench.timing import median_seconds  # noqa: E402
from prefix_jax import sharding  # noqa: E402
from prefix_jax.methods import PrefixConfig, PrefixLM, PrefixParam, create_prefix  # noqa: E402
from prefix_jax.models import load  # noqa: E402
from prefix_jax.train.step import OptimConfig, Trainer, make_optimizer  # noqa: E402

BATCH, LENGTH = 8, 64
LAYOUTS = {
    "1 device": None,
    "data 8 (replicated weights)": (8, 1, 1),
    "fsdp 8": (1, 8, 1),
    "data 2 x fsdp 4": (2, 4, 1),
}


def measure(shape, steps: int) -> dict:
    if shape is None:
        mesh = None
        devices = jax.devices()[:1]
    else:
        mesh = sharding.make_mesh(list(zip(sharding.MESH_AXES, shape, strict=True)))
        devices = mesh.devices.ravel()
    model, _ = load("smollm2", with_tokenizer=False, mesh=mesh)
    prefix, _ = create_prefix(model, PrefixConfig(length=10, reparam="mlp"))
    tx = make_optimizer(OptimConfig(learning_rate=1e-4), PrefixParam)
    trainer = Trainer(PrefixLM(model, prefix), tx, PrefixParam, mesh=mesh)
    rng = np.random.default_rng(0)
    batch = {
        "tokens": rng.integers(0, model.config.vocab_size, (BATCH, LENGTH)).astype(np.int32),
        "attention_mask": np.ones((BATCH, LENGTH), np.int32),
        "loss_mask": np.ones((BATCH, LENGTH), np.int32),
    }
    batch = sharding.global_batch(batch, mesh) if mesh else jax.tree.map(jnp.asarray, batch)
    key = jax.random.key(0)
    lowered = trainer._step.lower(trainer.state, trainer.frozen, batch, key)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    per_device = (
        memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
    )
    jax.block_until_ready(trainer.step(batch, key))
    step_s = median_seconds(lambda: jax.block_until_ready(trainer.step(batch, key)), steps)
    weights = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(trainer.frozen))
    return {
        "devices": len(devices),
        "step_s": step_s,
        "compile_s": compile_s,
        "per_device_mb": per_device / 2**20,
        "weights_per_device_mb": weights / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rows = {name: measure(shape, args.steps) for name, shape in LAYOUTS.items()}
    print(
        f"SmolLM2-135M prefix p=10 (MLP), batch {BATCH} x {LENGTH}, float32, "
        f"median of {args.steps} steps, {jax.device_count()} simulated CPU devices"
    )
    print(
        "| layout | devices | step s | compile s | step memory / device MB | "
        "frozen weights / device MB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['devices']} | {r['step_s']:.2f} | {r['compile_s']:.1f} | "
            f"{r['per_device_mb']:.0f} | {r['weights_per_device_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
