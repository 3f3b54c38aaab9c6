"""Ahead-of-time fit checks: compile the real train, decode and serving steps for a device
topology.

- `topology`: the slices (`v5e-256`, ...; libtpu's compiler targets them from any machine,
  `pip install -e .[tpu]`) or `cpu-N` (N CPU devices of this process, which must be started
  with `jax_num_cpu_devices >= N`);
- `compile`: the project's own train step and one greedy decoding step lowered with
  abstract, sharded arguments and compiled; `Fit` holds the compiler's per-device memory;
- `generate`: the serving engine's generate step (`serve.programs`) over an abstract
  slot cache and prefix table; `ServingFit` adds the resident table to its memory;
- `floors`: what a straightforward sharded implementation of the same step must hold per
  chip, so that a total far above its floor points at waste;
- `flops`: analytic FLOPs of the same steps;
- `geometry`: what differs between a decoder-only model and an encoder-decoder, once.
"""

from prefix_jax.scale.aot.compile import (
    Fit,
    Memory,
    abstract_batch,
    abstract_method_model,
    compile_decode_step,
    compile_fit,
    compile_train_step,
    shard_bytes,
)
from prefix_jax.scale.aot.floors import decode_floor, generate_floor, largest_weight, train_floor
from prefix_jax.scale.aot.flops import decode_flops, train_flops
from prefix_jax.scale.aot.generate import ServingFit, compile_generate_step
from prefix_jax.scale.aot.geometry import decoding_weights
from prefix_jax.scale.aot.topology import TOPOLOGIES, GiB, Topology, devices, topology

__all__ = [
    "GiB",
    "TOPOLOGIES",
    "Fit",
    "Memory",
    "ServingFit",
    "Topology",
    "abstract_batch",
    "abstract_method_model",
    "compile_decode_step",
    "compile_fit",
    "compile_generate_step",
    "compile_train_step",
    "decode_floor",
    "decode_flops",
    "decoding_weights",
    "devices",
    "generate_floor",
    "largest_weight",
    "shard_bytes",
    "topology",
    "train_floor",
    "train_flops",
]
