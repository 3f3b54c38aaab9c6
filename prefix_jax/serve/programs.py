"""The engine's device half: the programs of `serve/slots.py` compiled ahead of time, the
cache and prefix table they update, the per-slot host arrays they read, and a count of
every compilation.

Each program is `jax.jit(...).lower(...).compile()`d once at start-up and kept; a compiled
program never recompiles (a call with other shapes is an error, not a new program). A
`jax.monitoring` listener counts backend compilations made on the engine's behalf (a
thread-local flag marks its calls), so `compilations_after_warmup` shows that nothing
else compiled later either: host-side work is numpy only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from prefix_jax.data import pick_bucket
from prefix_jax.infer.decode import TracedOptions
from prefix_jax.methods.prefix.artifact import ExportedPrefix
from prefix_jax.models.kv import CACHE_AXES, KVCache
from prefix_jax.models.transformer import Transformer
from prefix_jax.scale.sharding import ActivationSharding
from prefix_jax.serve import slots
from prefix_jax.serve.prefix_bank import PrefixInfo, read_prefix

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_counting = threading.local()
_listening = threading.Lock()
_registered = False


def _on_duration(event: str, duration: float, **_) -> None:
    counter = getattr(_counting, "counter", None)
    if event == _COMPILE_EVENT and counter is not None:
        counter[0] += 1


def _listen() -> None:
    global _registered
    with _listening:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            _registered = True


@dataclasses.dataclass(frozen=True)
class CheckedPrefix:
    exported: ExportedPrefix
    info: PrefixInfo


def default_buckets(max_len: int) -> tuple[int, ...]:
    """Powers of two from 16 below max_len, and max_len - 1 (a prompt leaves one slot)."""
    top = max_len - 1
    return tuple(b for b in (16 << i for i in range(32)) if b < top) + (top,)


class Programs:
    """Compiled programs, device state and per-slot host arrays of one engine."""

    def __init__(
        self,
        model: Transformer,
        *,
        slots: int,
        max_len: int,
        prefix_capacity: int,
        prefix_max_length: int,
        buckets: Sequence[int] | None,
        beam_sizes: Sequence[int],
        banned_ids: Sequence[int],
        eos_id: int | None,
        mesh,
    ):
        c = model.config if isinstance(model, Transformer) else None
        if c is None:
            raise ValueError("the engine serves decoder-only models (a Transformer)")
        if any(c.layer_windows()):
            raise ValueError(
                "the engine does not serve sliding-window attention (Mistral / Gemma "
                "windows): use the batch decoders of prefix_jax.infer.decode"
            )
        for name, value, least in (
            ("slots", slots, 1),
            ("max_len", max_len, 2),
            ("prefix_capacity", prefix_capacity, 1),
            ("prefix_max_length", prefix_max_length, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        where = model.activation_sharding
        if mesh is not None and (where is None or where.mesh != mesh):
            raise ValueError("load the model with this mesh (models.load(..., mesh=mesh))")
        self.buckets = tuple(sorted(set(buckets or default_buckets(max_len))))
        if self.buckets[0] < 1 or self.buckets[-1] >= max_len:
            raise ValueError(f"buckets must be in [1, max_len={max_len}), got {self.buckets}")
        if any(k < 2 for k in beam_sizes):
            raise ValueError(f"beam sizes must be >= 2, got {tuple(beam_sizes)}")
        self.beam_sizes = frozenset(beam_sizes)
        self.model, self.config = model, c
        self.vocab_size, self.max_len = c.vocab_size, max_len
        self.prefix_max_length = prefix_max_length
        self.eos = np.int32(-1 if eos_id is None else eos_id)
        banned = np.zeros(c.vocab_size, bool)
        banned[np.asarray(banned_ids, np.int64).reshape(-1)] = True
        self.banned = banned
        self._no_ban = np.zeros(c.vocab_size, bool)
        # Per-slot host arrays, sent with every generate step.
        self.last, self.active, self.sampling = slot_arrays(slots)

        _listen()
        self._count = [0]
        with self.counting():
            self._build(model, slots, prefix_capacity, where)
        self.warmup_compilations = self._count[0]

    @property
    def compilations_after_warmup(self) -> int:
        return self._count[0] - self.warmup_compilations

    @contextlib.contextmanager
    def counting(self):
        """Count compilations on this thread as the engine's."""
        before = getattr(_counting, "counter", None)
        _counting.counter = self._count
        try:
            yield
        finally:
            _counting.counter = before

    # ------------------------------------------------------------------ start-up

    def _build(self, model, n_slots: int, capacity: int, where) -> None:
        c, big_p, dtype = self.config, self.prefix_max_length, model.dtype
        graphdef, self.state = nnx.split(model)
        pin_cache, pin_table = _pins(where)
        self.table = jax.jit(lambda: pin_table(empty_table(c, capacity, big_p, dtype)))()
        self.cache = jax.jit(lambda: pin_cache(empty_cache(model, n_slots, self.max_len)))()

        def write(table, entry, keys, values, length, after):
            return pin_table(slots.write_prefix(table, entry, keys, values, length, after))

        kv = np.zeros((c.num_layers, 1, big_p, c.num_kv_heads, c.head_dim), dtype)
        self._write = _compile(
            write, self.table, np.int32(0), kv, kv, np.int32(0), np.bool_(0), donate=(0,)
        )
        prefill = functools.partial(slots.prefill, graphdef)
        self._prefill, self._insert, self._beam = {}, {}, {}

        def insert(cache, pre, slot):
            return pin_cache(slots.insert(cache, pre, slot, prefix_max_length=big_p))

        one = self._sampling(np.zeros(1, np.int64))
        for bucket in self.buckets:
            tokens = np.zeros((1, bucket), np.int32)
            args = (self.table, tokens, np.int32(1), np.int32(-1))
            self._prefill[bucket] = _compile(prefill, self.state, *args, one, self.eos, self.banned)
            pre, _ = self._prefill[bucket](self.state, *args, one, self.eos, self.banned)
            self._insert[bucket] = _compile(insert, self.cache, pre, np.int32(0), donate=(0,))
        # Beam search: one program per beam size, at the largest bucket (beam requests are
        # the rare ones; a longer prefill costs less than compiling it per bucket).
        tokens = np.zeros((1, self.buckets[-1]), np.int32)
        for k in sorted(self.beam_sizes):
            fn = functools.partial(slots.beam, graphdef, beam_size=k, max_len=self.max_len)
            args = (self.table, tokens, np.int32(1), np.int32(-1), self._options(0, False, 1.0))
            self._beam[k] = _compile(fn, self.state, *args, np.int32(1))

        self._generate = lower_generate(
            graphdef,
            where,
            self.state,
            self.cache,
            self.last,
            self.active,
            self.sampling,
            self.eos,
            self.banned,
        ).compile()

    def _sampling(self, rows) -> slots.Sampling:
        return jax.tree.map(lambda a: a[rows], self.sampling)

    def _options(self, min_tokens: int, ban: bool, length_penalty: float) -> TracedOptions:
        return TracedOptions(
            eos_id=self.eos,
            pad_id=np.int32(max(int(self.eos), 0)),
            min_new_tokens=np.int32(min_tokens),
            banned=self.banned if ban else self._no_ban,
            length_penalty=np.float32(length_penalty),
        )

    # ------------------------------------------------------------------ prefixes

    def check_prefix(self, name: str, source: ExportedPrefix | str | Path, entry: int):
        """A prefix read and checked against the model and the table (ValueError)."""
        exported, info = read_prefix(self.model, name, source, entry)
        if exported.length > self.prefix_max_length:
            raise ValueError(
                f"prefix {name!r} has length {exported.length}; the table holds at most "
                f"{self.prefix_max_length} (prefix_max_length)"
            )
        return CheckedPrefix(exported, info)

    def write_prefix(self, entry: int, exported: ExportedPrefix) -> None:
        """Write a prefix into a table entry, padded on the host to the table's length."""
        c, p = self.config, exported.length
        kv = np.asarray(exported.table, np.float32).reshape(
            p, c.num_layers, 2, c.num_kv_heads, c.head_dim
        )
        kv = np.transpose(kv, (2, 1, 0, 3, 4))[:, :, None]  # [2, L, 1, p, kv, hd]
        pad = [(0, 0)] * 3 + [(0, self.prefix_max_length - p)] + [(0, 0)] * 2
        kv = np.pad(kv, pad).astype(self.table.keys.dtype)
        after = np.bool_(exported.positions_after_prefix)
        with self.counting():
            self.table = self._write(self.table, np.int32(entry), kv[0], kv[1], np.int32(p), after)

    # ------------------------------------------------------------------ slots

    def bucket(self, length: int) -> int:
        return pick_bucket(length, self.buckets)

    def prefill_insert(self, slot: int, prompt: Sequence[int], entry: int, params, seed: int):
        """Prefill a prompt, insert it into `slot`, set the slot's sampling; first token."""
        bucket = self.bucket(len(prompt))
        tokens = np.zeros((1, bucket), np.int32)
        tokens[0, : len(prompt)] = prompt
        s = self.sampling
        self.active[slot] = True
        s.temperature[slot] = params.temperature
        s.top_p[slot] = params.top_p
        s.seed[slot] = (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)
        s.step[slot] = 0
        s.min_tokens[slot] = params.min_tokens
        s.ban[slot] = params.ban_tokens
        with self.counting():
            pre, first = self._prefill[bucket](
                self.state,
                self.table,
                tokens,
                np.int32(len(prompt)),
                np.int32(entry),
                self._sampling(np.array([slot])),
                self.eos,
                self.banned,
            )
            self.cache = self._insert[bucket](self.cache, pre, np.int32(slot))
            return int(np.asarray(first)[0])

    def advance(self, slot: int, token: int) -> None:
        """The slot's token goes into the next generate step."""
        self.last[slot] = token
        self.sampling.step[slot] += 1

    def free(self, slot: int) -> None:
        self.active[slot] = False

    def generate(self) -> np.ndarray:
        """One generate step over every slot; the new tokens [S] (read where active)."""
        with self.counting():
            self.cache, tokens = self._generate(
                self.state,
                self.cache,
                self.last,
                self.active,
                self.sampling,
                self.eos,
                self.banned,
            )
            return np.asarray(tokens)

    def beam(self, prompt: Sequence[int], entry: int, params) -> list[int]:
        """A beam-search request decoded whole: its max_tokens best tokens (pad after eos)."""
        tokens = np.zeros((1, self.buckets[-1]), np.int32)
        tokens[0, : len(prompt)] = prompt
        options = self._options(params.min_tokens, params.ban_tokens, params.length_penalty)
        with self.counting():
            sequence, _ = self._beam[params.beam_size](
                self.state,
                self.table,
                tokens,
                np.int32(len(prompt)),
                np.int32(entry),
                options,
                np.int32(params.max_tokens),
            )
            return np.asarray(sequence)[: params.max_tokens].tolist()


def _compile(fn, *args, donate: tuple[int, ...] = ()):
    """`fn` compiled for these arguments' shapes, dtypes and shardings."""
    return jax.jit(fn, donate_argnums=donate).lower(*args).compile()


# ---------------------------------------------------------------------- shared with AOT
# The pieces below are public so that the AOT fit check (`prefix_jax.scale.aot`) compiles
# the very generate program the engine runs, over abstract arguments laid out as here.


def slot_arrays(n_slots: int) -> tuple[np.ndarray, np.ndarray, slots.Sampling]:
    """Fresh per-slot host arrays of S slots: last tokens, active flags, sampling options."""
    return (
        np.zeros(n_slots, np.int32),
        np.zeros(n_slots, bool),
        slots.Sampling(
            temperature=np.zeros(n_slots, np.float32),
            top_p=np.ones(n_slots, np.float32),
            seed=np.zeros((n_slots, 2), np.uint32),
            step=np.zeros(n_slots, np.int32),
            min_tokens=np.zeros(n_slots, np.int32),
            ban=np.zeros(n_slots, bool),
        ),
    )


def empty_cache(model: Transformer, n_slots: int, max_len: int) -> KVCache:
    """The decode cache [layers, S, max_len, kv_heads, head_dim], every slot free, with a
    write index per slot."""
    cache = model.init_cache(n_slots, max_len)
    return cache.replace(index=jnp.zeros((n_slots,), jnp.int32))


def empty_table(config, capacity: int, prefix_max_length: int, dtype) -> slots.PrefixTable:
    """A prefix table of `capacity` free entries of `prefix_max_length` keys/values."""
    c = config
    shape = (c.num_layers, capacity, prefix_max_length, c.num_kv_heads, c.head_dim)
    return slots.PrefixTable(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        lengths=jnp.zeros((capacity,), jnp.int32),
        after=jnp.zeros((capacity,), bool),
    )


def cache_layout(cache: KVCache, where: ActivationSharding) -> KVCache:
    """Where the engine keeps the cache on a mesh: keys/values by `CACHE_AXES` (slots over
    the data axes, kv heads over tensor), the per-slot bookkeeping replicated."""
    replicated = NamedSharding(where.mesh, PartitionSpec())
    return cache.replace(
        keys=where.spec(cache.keys.shape, CACHE_AXES),
        values=where.spec(cache.values.shape, CACHE_AXES),
        valid=replicated,
        index=replicated,
        next_position=replicated,
    )


def table_layout(table: slots.PrefixTable, where: ActivationSharding) -> slots.PrefixTable:
    """Where the engine keeps the prefix table: keys/values over kv heads, like the cache
    they are copied into; lengths and conventions replicated."""
    replicated = NamedSharding(where.mesh, PartitionSpec())
    axes = ("layers", None, None, "kv_heads", "head_dim")
    return table.replace(
        keys=where.spec(table.keys.shape, axes),
        values=where.spec(table.values.shape, axes),
        lengths=replicated,
        after=replicated,
    )


def _pins(where):
    """Functions that constrain the cache and the table to the mesh's layout (identity
    without a mesh): every program then hands them back exactly as it took them."""
    if where is None:
        return (lambda x: x), (lambda x: x)

    def pin(layout):
        return lambda tree: jax.tree.map(
            jax.lax.with_sharding_constraint, tree, layout(tree, where)
        )

    return pin(cache_layout), pin(table_layout)


def lower_generate(
    graphdef, where: ActivationSharding | None, state, cache, last, active, sampling, eos, banned
) -> jax.stages.Lowered:
    """The engine's generate step (`slots.generate`, its cache pinned to the mesh's layout
    and donated) lowered for these arguments, concrete or `jax.ShapeDtypeStruct`s."""
    pin_cache, _ = _pins(where)

    def generate(state, cache, last, active, sampling, eos, banned):
        cache, tokens = slots.generate(graphdef, state, cache, last, active, sampling, eos, banned)
        return pin_cache(cache), tokens

    jitted = jax.jit(generate, donate_argnums=(1,))
    return jitted.lower(state, cache, last, active, sampling, eos, banned)
