"""Keys and values that attention reads besides the current tokens': prefixes and caches.

Both model kinds share these: a `PrefixKV` is what prefix-tuning trains (and what the
encoder-decoder carries three of), a `KVCache` is what decoding keeps between steps (the
encoder-decoder adds its cross-attention keys in `Seq2SeqCache`). The helpers put a prefix
in front of keys, values and masks, or into a cache's first slots, the same way for both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from prefix_jax.models.attention import AttentionMask
from prefix_jax.scale.sharding import ActivationSharding, constrain

Array = jax.Array

# Logical axes of a stacked cache (see `prefix_jax.scale.sharding`).
CACHE_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")


class PrefixKV(struct.PyTreeNode):
    """Per-layer prefix keys and values that every query may attend to.

    keys/values: [layers, batch or 1, p, kv_heads, head_dim]. `mask` ([batch or 1, p],
    True = attend) lets rows of one batch carry prefixes of different lengths.
    """

    keys: Array
    values: Array
    mask: Array | None = None
    # False: real tokens are numbered from 0 (ours). True: from the prefix length, as in
    # Li & Liang's code and PEFT, where the prefix occupies positions 0..p-1.
    positions_after_prefix: bool = struct.field(pytree_node=False, default=False)

    @property
    def length(self) -> int:
        return self.keys.shape[2]


class KVCache(struct.PyTreeNode):
    """Keys/values of past tokens, written at slot `index` and advanced after each call.

    Usually all rows share slot indices (prompts are left- or right-padded to one length);
    an `index` of shape [B] lets each row write its one new token at its own slot (the
    serving engine's slots, `prefix_jax.serve`), for global attention only. `valid`
    marks slots that hold real tokens and `next_position` is each row's next RoPE position.
    The first `prefix_length` slots may hold a prefix (decoding puts it there): they are
    attended like the prefix, outside any sliding window.
    """

    keys: Array  # [layers, batch, max_len, kv_heads, head_dim]
    values: Array
    valid: Array  # [batch, max_len] bool
    index: Array  # [] int32 (or [B], per row), first free slot
    next_position: Array  # [batch] int32
    prefix_length: int = struct.field(pytree_node=False, default=0)

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]


class Seq2SeqCache(struct.PyTreeNode):
    """What encoder-decoder decoding keeps between steps: the decoder self-attention cache,
    and each layer's cross-attention keys/values, computed once from the encoder output
    (with the cross prefix, if any, in their first `cross_prefix_length` slots)."""

    self_attn: KVCache
    cross_keys: Array  # [layers, batch, p_cross + S, heads, head_dim]
    cross_values: Array
    cross_valid: Array  # [batch, p_cross + S] bool
    cross_prefix_length: int = struct.field(pytree_node=False, default=0)


def empty_cache(
    layers: int,
    batch: int,
    max_len: int,
    kv_heads: int,
    head_dim: int,
    dtype,
    where: ActivationSharding | None,
) -> KVCache:
    """A cache of `max_len` free slots per row, laid out by `CACHE_AXES`."""
    shape = (layers, batch, max_len, kv_heads, head_dim)
    return KVCache(
        keys=constrain(jnp.zeros(shape, dtype), where, *CACHE_AXES),
        values=constrain(jnp.zeros(shape, dtype), where, *CACHE_AXES),
        valid=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
        next_position=jnp.zeros((batch,), jnp.int32),
    )


def fill_prefix(cache: KVCache, prefix: PrefixKV) -> KVCache:
    """An empty cache with its first p slots holding the prefix: decoding then attends to
    it like any cached token, and the tokens after it start at slot p."""
    p, batch = prefix.length, cache.valid.shape[0]

    def place(slots: Array, part: Array) -> Array:
        part = jnp.broadcast_to(part, (*slots.shape[:2], *part.shape[2:]))
        return slots.at[:, :, :p].set(part.astype(slots.dtype))

    valid = jnp.ones((1, p), bool) if prefix.mask is None else prefix.mask.astype(bool)
    start = prefix_lengths(prefix) if prefix.positions_after_prefix else 0
    return cache.replace(
        keys=place(cache.keys, prefix.keys),
        values=place(cache.values, prefix.values),
        valid=cache.valid.at[:, :p].set(jnp.broadcast_to(valid, (batch, p))),
        index=jnp.asarray(p, cache.index.dtype),
        next_position=cache.next_position + start,
        prefix_length=p,
    )


def write_cache(
    kv: tuple[Array, Array],
    layer: Array,
    index: Array,
    k: Array,
    v: Array,
    where: ActivationSharding | None,
) -> tuple[Array, Array, tuple[Array, Array]]:
    """Write one layer's new keys/values at slot `index` of the stacked cache `kv`; returns
    that layer's whole cache (in k's dtype) and the updated stack. `index` is a scalar (all
    rows at one slot) or [B] with one token per row, each written at its own slot.

    The stack rides in the scan's carry, not in its xs/ys: each step then writes only its
    new slots in place instead of copying every layer's whole cache into a new stack.
    """
    ck, cv = kv
    if index.ndim == 0:
        ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (layer, 0, index, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (layer, 0, index, 0, 0))
    else:  # one token per row, each row at its own slot (continuous batching)
        rows = jnp.arange(k.shape[0])
        ck = ck.at[layer, rows, index].set(k[:, 0].astype(ck.dtype), mode="drop")
        cv = cv.at[layer, rows, index].set(v[:, 0].astype(cv.dtype), mode="drop")
    ck, cv = constrain(ck, where, *CACHE_AXES), constrain(cv, where, *CACHE_AXES)
    return ck[layer].astype(k.dtype), cv[layer].astype(v.dtype), (ck, cv)


def prefix_lengths(prefix: PrefixKV) -> Array:
    """Number of attendable prefix slots per row ([batch or 1])."""
    if prefix.mask is None:
        return jnp.full((prefix.keys.shape[1],), prefix.length, jnp.int32)
    return prefix.mask.astype(jnp.int32).sum(-1)


def prefix_valid(prefix: PrefixKV, batch: int) -> Array:
    """[batch, p] bool: which prefix slots each row attends to."""
    p_mask = prefix.mask if prefix.mask is not None else jnp.ones((1, prefix.length), bool)
    return jnp.broadcast_to(p_mask.astype(bool), (batch, prefix.length))


def prepend(prefix_kv: tuple[Array, Array], k: Array, v: Array) -> tuple[Array, Array]:
    """[prefix, k] and [prefix, v] along the key axis; the prefix broadcast over the batch."""
    pk, pv = prefix_kv
    b = k.shape[0]
    pk = jnp.broadcast_to(pk, (b, *pk.shape[1:])).astype(k.dtype)
    pv = jnp.broadcast_to(pv, (b, *pv.shape[1:])).astype(v.dtype)
    return jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1)


def mask_with_prefix(mask: AttentionMask, prefix: PrefixKV, batch: int) -> AttentionMask:
    """The mask with p prefix keys (slot -1: seen by every query, no position) in front."""
    p = prefix.length
    return mask.replace(
        key_slots=jnp.concatenate([jnp.full((p,), -1, jnp.int32), mask.key_slots]),
        key_valid=jnp.concatenate([prefix_valid(prefix, batch), mask.key_valid], axis=1),
        prefix_length=mask.prefix_length + p,
    )


def check_prefix(
    prefix: PrefixKV, layers: int, kv_heads: int, head_dim: int, batch: int, which: str = ""
) -> None:
    """A clear error when a prefix does not fit the model (or `which` of its stacks)."""
    the = f"the {which} prefix" if which else "prefix"
    expected = (layers, kv_heads, head_dim)
    got = (prefix.keys.shape[0], *prefix.keys.shape[3:])
    if prefix.keys.ndim != 5 or got != expected or prefix.values.shape != prefix.keys.shape:
        raise ValueError(
            f"{the} keys/values must be [layers, batch or 1, p, kv_heads, head_dim] with "
            f"layers, kv_heads, head_dim = {expected}; got keys {prefix.keys.shape}, "
            f"values {prefix.values.shape}"
        )
    if prefix.keys.shape[1] not in (1, batch):
        raise ValueError(f"{the} batch {prefix.keys.shape[1]} is neither 1 nor {batch}")
