"""Grouped-query attention over prefix + token keys: one function, several kernels.

Which key a query may see is described by `AttentionMask`, a few vectors rather than a
[batch, T, S] array: query i sees key j when the key is valid for its row and
`key_slots[j] <= query_slots[i]`. Prefix keys carry slot -1, so every query sees every
(unmasked) prefix key and the causal part of the tokens is offset by p. That is the trap of
stock causal masks, which are aligned top-left (`tril(ones(T, S))`) and would hide the last
p tokens' keys from the first p queries.

Every kernel takes the score `scale` (default head_dim ** -0.5) and an optional logit
soft-cap (Gemma 2: scores -> cap * tanh(scores / cap), before the mask). A sliding window
(`AttentionMask.window`) is a static int or a traced per-layer scalar (0 = global), so a
layer scan can carry each layer's window.

Kernels (`implementation`):
- `xla`: the dense reference; keeps float32 scores and probabilities [B, H, T, S] for the
  backward pass.
- `flash`: FlashAttention's online softmax written in XLA ops (Dao et al., 2022): scans over
  key blocks, never holds more than one [B, H, block, block] tile, and a custom VJP that
  recomputes the tiles from the saved log-sum-exp. Runs on every platform.
- `splash`: TPU Pallas splash attention with `CausalMask(offset=p)`; padding and per-row
  prefix masks become segment ids. Needs keys laid out as [prefix, the queries' own tokens]
  and full attention; cached steps (keys from a cache) and sliding windows (static or
  traced, even a traced 0) use `flash`. The soft-cap is the kernel's own
  `attn_logits_soft_cap`.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` with the explicit mask
  (cuDNN turns it into a [B, 1, T, S] bias: no per-head scores, but not O(T) either).
  That API has no soft-cap argument, so soft-capped attention runs `flash` instead.
- `auto`: `splash` on TPU; elsewhere `flash` for long sequences and `xla` for short ones,
  where one flash tile would hold every score anyway (see `resolve`).

Outputs at padding queries (`query_valid` False) are zero under every kernel: they have no
valid key, so each kernel would otherwise fill them differently.

Encoder-decoder models add two things (`AttentionMask.causal`, `AttentionMask.bias`): a
bidirectional mask (encoder self-attention, cross-attention) and T5's relative position
bias, a learned [buckets, heads] table looked up by the bucket of `key_slot - query_slot`.
The bias is added to the scaled (and, were a cap given, soft-capped) scores, as
transformers adds its position bias with the mask. `xla` adds the dense bias to the scores;
`flash` computes it per tile from the slots, in the forward pass and in the recomputing
backward pass. Neither differentiates the table: it belongs to the frozen base model.
Prefix keys (slot -1) get no bias, as they have no position. `splash` handles neither (its
mask is `CausalMask` and it takes no bias), and `cudnn` would need the bias materialized as
a dense [1, H, T, S] array, the memory flash avoids; both fall back to `flash`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from prefix_jax.scale.sharding import ActivationSharding

Array = jax.Array

IMPLEMENTATIONS = ("auto", "xla", "flash", "splash", "cudnn")
# Logical axes of queries and keys/values (see `prefix_jax.scale.sharding`).
HEAD_AXES = ("batch", "length", "heads", "head_dim")
KV_AXES = ("batch", "length", "kv_heads", "head_dim")
# The fill of masked scores: finite, so that a row with no visible key stays finite.
MASKED = float(jnp.finfo(jnp.float32).min)
FLASH_BLOCK = 512
SPLASH_BLOCK = 512
# `auto` off TPU: dense attention up to this many scores per head and row (256 x 512).
DENSE_SCORES = 256 * 512


class AttentionMask(struct.PyTreeNode):
    """Which keys each query may see: `key_valid[b, j] and key_slots[j] <= query_slots[i]`.

    The first `prefix_length` keys are the prefix (slot -1). `self_aligned` says that the
    keys after the prefix are the queries' own tokens (no cache), i.e. the mask is causal
    with offset p, which the splash kernel needs to know statically. `window` is a pytree
    leaf: a Python int (static; 0 = none) or a traced int32 scalar (0 = global layer).
    """

    query_slots: Array  # [T] int32
    key_slots: Array  # [S] int32
    key_valid: Array  # [B, S] bool
    query_valid: Array  # [B, T] bool
    prefix_length: int = struct.field(pytree_node=False, default=0)
    self_aligned: bool = struct.field(pytree_node=False, default=False)
    window: int | Array = 0  # sliding window; 0 = none
    # False: every query sees every valid key (encoder self-attention, cross-attention).
    causal: bool = struct.field(pytree_node=False, default=True)
    bias: RelativeBias | None = None  # T5's relative position bias, by slot distance

    @property
    def has_window(self) -> bool:
        """Whether a window may apply (statically: a traced window may be 0 at run time)."""
        return not (isinstance(self.window, int) and self.window == 0)

    def dense(self) -> Array:
        """The [B, T, S] boolean mask."""
        seen = slots_visible(self.query_slots, self.key_slots, self.window, self.causal)
        return seen[None] & self.key_valid[:, None, :]


class RelativeBias(struct.PyTreeNode):
    """T5's relative position bias: `table[bucket(key_slot - query_slot)]` per head.

    Slots stand in for positions (seq2seq batches are right-padded, so a real token's slot
    is its position, as in transformers). Keys with slot < 0 (the prefix) get no bias.
    """

    table: Array  # [num_buckets, heads]
    bidirectional: bool = struct.field(pytree_node=False, default=True)
    max_distance: int = struct.field(pytree_node=False, default=128)

    def scores(self, query_slots: Array, key_slots: Array) -> Array:
        """The float32 bias [heads, T, S] of these query and key slots."""
        # Clip so that padding slots (int32 max, -2) cannot overflow the difference.
        qs = jnp.clip(query_slots.astype(jnp.int32), -1, 2**30)
        ks = jnp.clip(key_slots.astype(jnp.int32), -1, 2**30)
        buckets = relative_buckets(
            ks[None, :] - qs[:, None], self.bidirectional, self.table.shape[0], self.max_distance
        )
        bias = jnp.take(self.table.astype(jnp.float32), buckets, axis=0)  # [T, S, H]
        return jnp.where(ks[None, :, None] < 0, 0.0, bias).transpose(2, 0, 1)


def relative_buckets(
    relative: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """Mesh TensorFlow's buckets of `key - query` distances: exact for small distances,
    logarithmic up to `max_distance`; causal (not bidirectional) buckets only look back."""
    buckets = jnp.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = (relative > 0).astype(jnp.int32) * num_buckets
        relative = jnp.abs(relative)
    else:
        relative = -jnp.minimum(relative, 0)
    max_exact = num_buckets // 2
    far = jnp.log(jnp.maximum(relative, 1).astype(jnp.float32) / max_exact)
    far = far / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = jnp.minimum(max_exact + far.astype(jnp.int32), num_buckets - 1)
    return buckets + jnp.where(relative < max_exact, relative, large)


def slots_visible(
    query_slots: Array, key_slots: Array, window: int | Array = 0, causal: bool = True
) -> Array:
    """[T, S]: causal, and with a sliding `window` only the last `window` token slots up to
    the query's own (as Mistral: key > query - window). Prefix keys (slot < 0) stay visible
    to every query: the prefix has no position, so no window slides past it. A traced
    `window` of 0 means no window (a global layer in a scan over local and global layers).
    Not `causal`: every key is visible (no window either).
    """
    if not causal:
        return jnp.ones((query_slots.shape[0], key_slots.shape[0]), bool)
    seen = key_slots[None, :] <= query_slots[:, None]
    if isinstance(window, int) and window == 0:
        return seen
    recent = (key_slots[None, :] > query_slots[:, None] - window) | (key_slots[None, :] < 0)
    if not isinstance(window, int):
        recent |= window <= 0
    return seen & recent


def resolve(implementation: str, platform: str | None = None, scores: int = 0) -> str:
    """The kernel `auto` stands for on `platform` (default: the default backend's) for a
    [T, S] score matrix of `scores` = T * S entries per head and row.

    TPU: splash, the Pallas kernel MaxText uses. Elsewhere flash (XLA ops), which bounds
    memory on every backend, once the scores exceed `DENSE_SCORES`; below that one flash
    tile would hold them all, and the dense kernel is the same computation with less
    bookkeeping (and compiles faster). `cudnn` is opt-in on GPUs.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; "
            f"known: {', '.join(IMPLEMENTATIONS)}"
        )
    if implementation != "auto":
        return implementation
    if (platform or jax.default_backend()) == "tpu":
        return "splash"
    return "flash" if scores > DENSE_SCORES else "xla"


def pin_platform(implementation: str, platform: str) -> str:
    """`auto` fixed where the platform alone decides it (TPU: splash), for programs compiled
    ahead of time for another platform than this host's; otherwise unchanged."""
    if implementation == "auto" and platform == "tpu":
        return "splash"
    return implementation


def attention(
    q: Array,
    k: Array,
    v: Array,
    mask: AttentionMask,
    implementation: str = "xla",
    where: ActivationSharding | None = None,
    *,
    scale: float | None = None,
    softcap: float = 0.0,
) -> Array:
    """Softmax attention. q [B, T, H, hd], k/v [B, S, KV, hd] (H a multiple of KV).

    Scores are `scale * q.k` (default head_dim ** -0.5), soft-capped to (-softcap, softcap)
    when `softcap` > 0, plus the mask's relative bias if any. `where` (the model's
    activation sharding) is needed by kernels that run per device (splash, under
    `shard_map`).
    """
    b, t, h, hd = q.shape
    if k.shape[0] != b or k.shape[2] == 0 or h % k.shape[2] or k.shape != v.shape:
        raise ValueError(f"attention shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape}")
    scale = hd**-0.5 if scale is None else scale
    kind = resolve(implementation, scores=t * k.shape[1])
    if kind == "splash" and (not mask.self_aligned or mask.has_window or not mask.causal):
        kind = "flash"
    if kind in ("splash", "cudnn") and mask.bias is not None:
        kind = "flash"  # see the module docstring
    if kind == "cudnn" and softcap:
        kind = "flash"  # jax.nn.dot_product_attention has no soft-cap
    if kind == "xla":
        bias = None if mask.bias is None else mask.bias.scores(mask.query_slots, mask.key_slots)
        out = _dense(q, k, v, mask.dense(), scale, softcap, bias)
    elif kind == "flash":
        out = flash(q, k, v, mask, scale=scale, softcap=softcap)
    elif kind == "splash":
        out = splash(q, k, v, mask, where, scale=scale, softcap=softcap)
    else:
        out = cudnn(q, k, v, mask, scale=scale)
    return jnp.where(mask.query_valid[:, :, None, None], out, 0).astype(q.dtype)


def soft_cap(scores: Array, cap: float) -> Array:
    """cap * tanh(scores / cap): smooth clipping of logits to (-cap, cap); cap 0 = none."""
    return cap * jnp.tanh(scores / cap) if cap else scores


def _dense(
    q: Array,
    k: Array,
    v: Array,
    mask: Array,
    scale: float,
    softcap: float = 0.0,
    bias: Array | None = None,
) -> Array:
    """Reference attention; `bias` [H, T, S] (float32) is added to the scaled, soft-capped
    scores."""
    b, t, h, hd = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = soft_cap(scores * scale, softcap)
    if bias is not None:
        scores = scores + bias.reshape(kv, h // kv, *bias.shape[1:])
    scores = jnp.where(mask[:, None, None], scores, MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, hd)


def cudnn(
    q: Array,
    k: Array,
    v: Array,
    mask: AttentionMask,
    implementation="cudnn",
    *,
    scale: float | None = None,
) -> Array:
    """`jax.nn.dot_product_attention` with our mask (any window, traced included, is in the
    explicit mask); `implementation="xla"` runs the same call through XLA (how the CPU
    tests check the arguments we hand cuDNN). No soft-cap and no relative bias: `attention`
    runs flash then."""
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask.dense()[:, None], scale=scale, implementation=implementation
    )


# ---------------------------------------------------------------------------------------
# flash: online softmax over key blocks in XLA ops, with a recomputing custom VJP.


def _blocks(n: int, most: int) -> tuple[int, int]:
    """(block size, count) covering n with blocks of at most `most`, padding by < 8 rows
    per block rather than up to a whole block."""
    count = -(-n // most)
    size = -(-n // count)
    if count > 1:
        size = -(-size // 8) * 8
    return size, count


def _pad(x: Array, axis: int, to: int, value=0) -> Array:
    if x.shape[axis] == to:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, to - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def flash(
    q: Array,
    k: Array,
    v: Array,
    mask: AttentionMask,
    block: int | None = None,
    *,
    scale: float | None = None,
    softcap: float = 0.0,
) -> Array:
    """Blockwise attention with O(T) saved state; equal to `_dense` at valid queries.

    Tiles are at most `block` (default `FLASH_BLOCK`) queries by as many keys. The window
    enters as a traced int32 (0 = none) whether the mask's is static or not; causality,
    the soft-cap and the bias's bucketing are static (`_Rule`).
    """
    block = block or FLASH_BLOCK
    b, t, h, hd = q.shape
    s, kvh = k.shape[1], k.shape[2]
    bq, nq = _blocks(t, block)
    bk, nk = _blocks(s, block)
    # [B, KV, G, T, hd] and [B, KV, S, hd], padded to whole blocks; padded keys are invalid
    # and padded query slots see nothing extra (their rows are cut off below).
    qg = q.reshape(b, t, kvh, h // kvh, hd).transpose(0, 2, 3, 1, 4)
    scale = hd**-0.5 if scale is None else scale
    qg = _pad(qg * jnp.asarray(scale, q.dtype), 3, bq * nq)
    kg = _pad(k.transpose(0, 2, 1, 3), 2, bk * nk)
    vg = _pad(v.transpose(0, 2, 1, 3), 2, bk * nk)
    query_slots = _pad(mask.query_slots.astype(jnp.int32), 0, bq * nq, -2)
    key_slots = _pad(mask.key_slots.astype(jnp.int32), 0, bk * nk, jnp.iinfo(jnp.int32).max)
    key_valid = _pad(mask.key_valid.astype(bool), 1, bk * nk, False)
    window = jnp.asarray(mask.window, jnp.int32)
    rule = _Rule(mask.causal, float(softcap))
    table = jnp.zeros((1, h), jnp.float32)
    if mask.bias is not None:
        rule = rule._replace(bias=(mask.bias.bidirectional, mask.bias.max_distance))
        table = mask.bias.table.astype(jnp.float32)
    out = _flash(qg, kg, vg, query_slots, key_slots, key_valid, window, table, bq, bk, rule)
    return out[:, :, :, :t].transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def _split(x: Array, axis: int, size: int) -> Array:
    """[..., n*size, ...] -> [n, ..., size, ...]: blocks along `axis`, moved to the front."""
    shape = (*x.shape[:axis], x.shape[axis] // size, size, *x.shape[axis + 1 :])
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _merge(x: Array, axis: int) -> Array:
    """Inverse of `_split`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2 :])


class _Rule(NamedTuple):
    """The static part of the flash kernel's scores (hashable: a custom-VJP argument). The
    window is not here: it may be traced (one per layer), so it is an array argument."""

    causal: bool = True
    softcap: float = 0.0  # cap * tanh(scores / cap); 0: none
    bias: tuple[bool, int] | None = None  # (bidirectional, max_distance) of a RelativeBias


def _tile_scores(qi, kj, qs, ks, kv_ok, window, rule, table):
    """Masked float32 scores of one tile, whether each entry is visible, and the soft-cap's
    derivative d capped / d raw = 1 - tanh^2 (None without a cap), for the backward pass.

    qi [B, KV, G, bq, hd] (already scaled), kj [B, KV, bk, hd], qs [bq], ks [bk],
    kv_ok [B, bk]; `window` a traced int32 (0 = none); `table` holds the relative position
    bias when `rule.bias` is set (recomputed per tile, added after the cap).
    """
    scores = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32)
    slope = None
    if rule.softcap:
        tanh = jnp.tanh(scores / rule.softcap)
        scores, slope = rule.softcap * tanh, 1 - tanh * tanh
    if rule.bias is not None:
        bias = RelativeBias(table, *rule.bias).scores(qs, ks)  # [H, bq, bk]
        scores = scores + bias.reshape(*qi.shape[1:3], *bias.shape[1:])
    visible = slots_visible(qs, ks, window, rule.causal)[None] & kv_ok[:, None, :]
    visible = visible[:, None, None]
    return jnp.where(visible, scores, MASKED), visible, slope


def _any_visible(qs, ks, window, rule) -> Array:
    """Whether a tile may hold a visible entry (slots are sorted): some key is not after
    every query and, unless the (traced) window is 0, some key is a prefix key or recent
    enough. Without causality every tile may."""
    if not rule.causal:
        return jnp.array(True)
    recent = (window <= 0) | (jnp.min(ks) < 0) | (jnp.max(ks) > jnp.min(qs) - window)
    return (jnp.min(ks) <= jnp.max(qs)) & recent


def _forward(q, k, v, query_slots, key_slots, key_valid, window, table, bq, bk, rule):
    """Output [B, KV, G, T, hd] and log-sum-exp [B, KV, G, T] (float32)."""
    q_blocks = (_split(q, 3, bq), _split(query_slots, 0, bq))
    k_blocks = (_split(k, 2, bk), _split(v, 2, bk), _split(key_slots, 0, bk))
    k_blocks += (_split(key_valid, 1, bk),)

    def per_query_block(args):
        qi, qs = args

        def step(carry, xs):
            kj, vj, ks, kv_ok = xs

            def update(carry):
                m, total, acc = carry
                scores, _, _ = _tile_scores(qi, kj, qs, ks, kv_ok, window, rule, table)
                m_new = jnp.maximum(m, scores.max(-1))
                p = jnp.exp(scores - m_new[..., None])
                rescale = jnp.exp(m - m_new)
                total = total * rescale + p.sum(-1)
                pv = jnp.einsum(
                    "bkgqs,bksd->bkgqd",
                    p.astype(vj.dtype),
                    vj,
                    preferred_element_type=jnp.float32,
                )
                return m_new, total, acc * rescale[..., None] + pv

            visible = _any_visible(qs, ks, window, rule)
            return jax.lax.cond(visible, update, lambda c: c, carry), None

        stats = qi.shape[:-1]
        init = (
            jnp.full(stats, MASKED, jnp.float32),
            jnp.zeros(stats, jnp.float32),
            jnp.zeros(qi.shape, jnp.float32),
        )
        (m, total, acc), _ = jax.lax.scan(step, init, k_blocks)
        total = jnp.maximum(total, jnp.finfo(jnp.float32).tiny)
        return (acc / total[..., None]).astype(v.dtype), m + jnp.log(total)

    out, lse = jax.lax.map(per_query_block, q_blocks)
    return _merge(out, 3), _merge(lse, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def _flash(q, k, v, query_slots, key_slots, key_valid, window, table, bq, bk, rule):
    return _forward(q, k, v, query_slots, key_slots, key_valid, window, table, bq, bk, rule)[0]


def _flash_fwd(q, k, v, query_slots, key_slots, key_valid, window, table, bq, bk, rule):
    out, lse = _forward(q, k, v, query_slots, key_slots, key_valid, window, table, bq, bk, rule)
    return out, (q, k, v, query_slots, key_slots, key_valid, window, table, out, lse)


def _flash_bwd(bq, bk, rule, residuals, d_out):
    """FlashAttention-2's backward: per key block, loop over query blocks recomputing the
    probabilities from the saved log-sum-exp; dq accumulates across key blocks. With a
    soft-cap the score gradient is chained through the cap's derivative 1 - tanh^2. The bias
    table gets no gradient (it is a frozen base-model weight)."""
    q, k, v, query_slots, key_slots, key_valid, window, table, out, lse = residuals
    delta = jnp.einsum("bkgqd,bkgqd->bkgq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    q_blocks = tuple(_split(x, 3, bq) for x in (q, d_out, lse, delta))
    q_blocks += (_split(query_slots, 0, bq),)
    k_blocks = (_split(k, 2, bk), _split(v, 2, bk), _split(key_slots, 0, bk))
    k_blocks += (_split(key_valid, 1, bk),)

    def per_key_block(dq, xs):
        kj, vj, ks, kv_ok = xs

        def step(carry, ys):
            qi, doi, lse_i, delta_i, qs = ys

            def grads(carry):
                dk, dv = carry
                scores, visible, slope = _tile_scores(qi, kj, qs, ks, kv_ok, window, rule, table)
                p = jnp.exp(scores - lse_i[..., None])
                dv = dv + jnp.einsum(
                    "bkgqs,bkgqd->bksd",
                    p.astype(doi.dtype),
                    doi,
                    preferred_element_type=jnp.float32,
                )
                dp = jnp.einsum("bkgqd,bksd->bkgqs", doi, vj, preferred_element_type=jnp.float32)
                ds = p * (dp - delta_i[..., None])
                ds = ds if slope is None else ds * slope
                ds = jnp.where(visible, ds, 0).astype(qi.dtype)
                dk = dk + jnp.einsum(
                    "bkgqs,bkgqd->bksd", ds, qi, preferred_element_type=jnp.float32
                )
                dqi = jnp.einsum("bkgqs,bksd->bkgqd", ds, kj, preferred_element_type=jnp.float32)
                return (dk, dv), dqi

            def skip(carry):
                return carry, jnp.zeros(qi.shape, jnp.float32)

            return jax.lax.cond(_any_visible(qs, ks, window, rule), grads, skip, carry)

        zeros = jnp.zeros(kj.shape, jnp.float32)
        (dk, dv), dq_parts = jax.lax.scan(step, (zeros, zeros), q_blocks)
        return dq + dq_parts, (dk, dv)

    dq0 = jnp.zeros((q.shape[3] // bq, *q.shape[:3], bq, q.shape[4]), jnp.float32)
    dq, (dk, dv) = jax.lax.scan(per_key_block, dq0, k_blocks)
    return (
        _merge(dq, 3).astype(q.dtype),
        _merge(dk, 2).astype(k.dtype),
        _merge(dv, 2).astype(v.dtype),
        None,
        None,
        None,
        None,
        None,
    )


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---------------------------------------------------------------------------------------
# splash: TPU Pallas kernel, per device under shard_map.


def splash(
    q: Array,
    k: Array,
    v: Array,
    mask: AttentionMask,
    where: ActivationSharding | None = None,
    interpret: bool = False,
    *,
    scale: float | None = None,
    softcap: float = 0.0,
) -> Array:
    """Splash attention over [prefix, tokens] keys (`mask.self_aligned`), causal, no window,
    no relative bias.

    Padding becomes segment ids: real queries (1) see valid prefix and token keys (1);
    padding queries (0) see padding keys (0), at least their own, so no row is empty;
    masked prefix slots (2) are seen by nobody. `interpret=True` runs the kernel's Pallas
    interpreter (any backend; for tests).
    """
    if not mask.self_aligned:
        raise ValueError("splash attention needs keys laid out as [prefix, the query tokens]")
    if mask.has_window or not mask.causal or mask.bias is not None:
        raise ValueError(
            "splash attention here is causal with no sliding window and no relative bias; use flash"
        )
    b, t, h, hd = q.shape
    p, kvh = mask.prefix_length, k.shape[2]
    bq = min(SPLASH_BLOCK, -(-t // 128) * 128)
    t_pad = -(-t // bq) * bq
    bkv = min(SPLASH_BLOCK, -(-(p + t_pad) // 128) * 128)
    s_pad = -(-(p + t_pad) // bkv) * bkv
    q_ids = _pad(mask.query_valid.astype(jnp.int32), 1, t_pad)
    prefix_ids = jnp.where(mask.key_valid[:, :p], 1, 2)
    token_ids = mask.key_valid[:, p:].astype(jnp.int32)
    kv_ids = _pad(jnp.concatenate([prefix_ids, token_ids], axis=1), 1, s_pad)
    scale = hd**-0.5 if scale is None else scale
    q = _pad(q * jnp.asarray(scale, q.dtype), 1, t_pad)
    k, v = _pad(k, 1, s_pad), _pad(v, 1, s_pad)
    kernel = functools.partial(
        _splash_per_device,
        p=p,
        t_pad=t_pad,
        s_pad=s_pad,
        bq=bq,
        bkv=bkv,
        interpret=interpret,
        softcap=float(softcap) or None,
    )
    if where is None:
        out = kernel(q, k, v, q_ids, kv_ids)
    else:
        q_spec = where.spec(q.shape, HEAD_AXES).spec
        kv_spec = where.spec(k.shape, KV_AXES).spec
        if kv_spec[2] != q_spec[2]:  # heads split but KV heads not: give each head its KV
            k, v = (jnp.repeat(x, h // kvh, axis=2) for x in (k, v))
            kv_spec = where.spec(k.shape, KV_AXES).spec
        id_spec = jax.sharding.PartitionSpec(q_spec[0], None)
        out = jax.shard_map(
            kernel,
            mesh=where.mesh,
            in_specs=(q_spec, kv_spec, kv_spec, id_spec, id_spec),
            out_specs=q_spec,
            check_vma=False,
        )(q, k, v, q_ids, kv_ids)
    return out[:, :t]


def _splash_per_device(q, k, v, q_ids, kv_ids, *, p, t_pad, s_pad, bq, bkv, interpret, softcap):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernel_lib,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as mask_lib,
    )

    b, _, h, hd = q.shape
    kvh = k.shape[2]
    group = h // kvh
    causal = mask_lib.CausalMask((t_pad, s_pad), offset=p)
    sizes = kernel_lib.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    run = kernel_lib.make_splash_mqa(
        mask_lib.MultiHeadMask([causal] * group),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
        attn_logits_soft_cap=softcap,
    )

    def one_row(qr, kr, vr, q_id, kv_id):  # qr [KV, G, T, hd], kr/vr [KV, S, hd]
        ids = kernel_lib.SegmentIds(q=q_id, kv=kv_id)
        return jax.vmap(lambda qg, kg, vg: run(qg, kg, vg, ids))(qr, kr, vr)

    qr = q.reshape(b, t_pad, kvh, group, hd).transpose(0, 2, 3, 1, 4)
    kr, vr = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    out = jax.vmap(one_row)(qr, kr, vr, q_ids, kv_ids)  # [B, KV, G, T, hd]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t_pad, h, hd)
