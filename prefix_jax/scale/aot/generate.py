"""The serving engine's generate step compiled ahead of time for a device slice.

`serve.programs.lower_generate` is the very program the engine compiles at start-up
(`slots.generate`, cache pinned and donated); here its arguments are shapes laid out as the
engine lays them out (`programs.cache_layout`): abstract weights sharded by the rules, a
slot cache [layers, S, max_len, kv_heads, head_dim] split over kv heads (tensor) and slots
(data axes), and the per-slot host arrays. The prefix table is no argument of generate but
stays resident beside it, so its per-chip share is counted with the step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from prefix_jax.models.config import ModelConfig
from prefix_jax.models.pretrained import abstract_model
from prefix_jax.scale import sharding
from prefix_jax.scale.aot.compile import Fit, compile_fit, shard_bytes
from prefix_jax.serve import programs
from prefix_jax.train.step import with_shardings


@dataclasses.dataclass(frozen=True)
class ServingFit:
    """The generate step's compiled memory per chip, and the resident prefix table's."""

    fit: Fit
    table_bytes: int
    # Shares per chip of the step's two large arguments, from their layouts.
    weights_bytes: int
    cache_bytes: int

    @property
    def total(self) -> int:
        """The step's peak (or the compiler's refusal) plus the table beside it."""
        return self.fit.total + self.table_bytes


def compile_generate_step(
    config: ModelConfig,
    mesh: Mesh,
    slots: int,
    max_len: int,
    *,
    prefix_capacity: int = 16,
    prefix_max_length: int = 64,
    rules=sharding.DEFAULT_RULES,
    param_dtype=jnp.bfloat16,
    dtype=jnp.bfloat16,
    attention: str = "auto",
) -> ServingFit:
    """The engine's generate step over `slots` slots of `max_len` tokens (prefix included)
    compiled for `mesh`'s devices, with a table of `prefix_capacity` prefixes of up to
    `prefix_max_length` tokens (the engine's defaults)."""
    if not isinstance(config, ModelConfig):
        raise ValueError("the serving engine serves decoder-only models (a ModelConfig)")
    if any(config.layer_windows()):
        raise ValueError("the serving engine does not serve sliding-window attention")
    model = abstract_model(
        config, param_dtype=param_dtype, dtype=dtype, mesh=mesh, rules=rules, attention=attention
    )
    graphdef, state = nnx.split(model)
    where = model.activation_sharding
    state = with_shardings(state, sharding.state_shardings(state, rules, mesh))
    cache = jax.eval_shape(lambda: programs.empty_cache(model, slots, max_len))
    cache = with_shardings(cache, programs.cache_layout(cache, where))
    table = jax.eval_shape(
        lambda: programs.empty_table(config, prefix_capacity, prefix_max_length, dtype)
    )
    table = with_shardings(table, programs.table_layout(table, where))
    # The per-slot arrays are host numpy arrays in the engine: shapes without a layout.
    last, active, sampling = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), programs.slot_arrays(slots)
    )
    eos = jax.ShapeDtypeStruct((), jnp.int32)
    banned = jax.ShapeDtypeStruct((config.vocab_size,), jnp.bool_)
    lowered = programs.lower_generate(
        graphdef, where, state, cache, last, active, sampling, eos, banned
    )
    kv = shard_bytes(cache.keys) + shard_bytes(cache.values)
    return ServingFit(compile_fit(lowered), shard_bytes(table), shard_bytes(state), kv)
