"""Batched decoding with a KV cache and an optional prefix, one compiled program per shape.

The whole generation (prefill + token loop) is one `jax.jit`: the loop is a
`lax.while_loop`, so no step recompiles or syncs with the host.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefix_jax.models.transformer import PrefixKV, Transformer

Array = jax.Array


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to a common length (rounded up to `multiple` to limit shapes)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every prompt needs at least one token")
    length = max(len(s) for s in sequences)
    length = -(-length // multiple) * multiple
    tokens = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for i, s in enumerate(sequences):
        tokens[i, length - len(s) :] = s
        mask[i, length - len(s) :] = True
    return tokens, mask


def greedy(
    model: Transformer,
    tokens: Array,
    attention_mask: Array,
    *,
    max_new_tokens: int,
    prefix: PrefixKV | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Array:
    """Greedy continuation [B, max_new_tokens] of left-padded prompts; after eos, `pad_id`."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    graphdef, state = nnx.split(model)
    return _greedy(
        graphdef,
        state,
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(attention_mask, bool),
        prefix,
        max_new_tokens=max_new_tokens,
        eos_id=-1 if eos_id is None else eos_id,
        pad_id=pad_id,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_id", "pad_id"))
def _greedy(graphdef, state, tokens, attention_mask, prefix, *, max_new_tokens, eos_id, pad_id):
    model = nnx.merge(graphdef, state)
    b, t = tokens.shape
    cache = model.init_cache(b, t + max_new_tokens)
    hidden, cache = model.hidden_states(tokens, attention_mask, prefix=prefix, cache=cache)
    first = jnp.argmax(model.unembed(hidden[:, -1:])[:, 0], axis=-1).astype(jnp.int32)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = first == eos_id

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, out, cache, done, last = carry
        hidden, cache = model.hidden_states(
            last[:, None], jnp.ones((b, 1), bool), prefix=prefix, cache=cache
        )
        nxt = jnp.argmax(model.unembed(hidden)[:, 0], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        out = out.at[:, i].set(nxt)
        return i + 1, out, cache, done | (nxt == eos_id), nxt

    _, out, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), out, cache, done, first))
    return out
