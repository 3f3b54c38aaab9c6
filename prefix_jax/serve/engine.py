"""The serving engine: continuous batching of many prefixes over one frozen base model.

S decode slots share one KV cache [layers, S, max_len, kv_heads, head_dim]. A request is
prefilled in a length bucket behind its prefix, inserted into a free slot (its prefix's
keys/values first, its prompt's after them, each slot with its own write index and
position), and then one jitted `generate` step makes a token for every slot; requests
join and leave between steps (`prefix_jax.serve.slots` holds the programs). Prefixes sit
in a fixed-capacity device table, so loading and unloading never recompiles: every program
is compiled in `__init__` and `stats()` counts any compilation after that.

Beam-search requests (`SamplingParams.beam_size` > 1, for the beam sizes declared at
start-up) run whole, one at a time, in the admission phase of a step: one compiled
program (prefill + `decode.beam_loop`) per bucket and beam size, between generate steps.

Thread model: `submit`, `cancel`, `load_prefix`, `unload_prefix` and `stats` may be called
from any thread; `step` runs on one thread at a time (the `start()` loop, or a caller).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from prefix_jax.methods.prefix.artifact import ExportedPrefix
from prefix_jax.serve.api import (
    EngineError,
    EngineStats,
    Event,
    PrefixLoadError,
    QueueFullError,
    RequestHandle,
    RequestTooLongError,
    SamplingParams,
    UnknownPrefixError,
)
from prefix_jax.serve.prefix_bank import BASE_TASK, PrefixInfo
from prefix_jax.serve.programs import Programs
from prefix_jax.serve.text import TextStream

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Request:
    handle: RequestHandle
    prompt: list[int]
    params: SamplingParams
    model_name: str
    entry: int  # table entry, -1 = the base model
    seed: int
    text: TextStream
    tokens: list[int] = dataclasses.field(default_factory=list)


class Engine:
    """Continuous batching over S slots (see the module docstring)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        slots: int = 8,
        max_len: int = 512,
        prefix_capacity: int = 16,
        prefix_max_length: int = 64,
        max_waiting: int = 64,
        mesh=None,
        buckets: Sequence[int] | None = None,
        beam_sizes: Sequence[int] = (),
        banned_ids: Sequence[int] = (),
        base_name: str = BASE_TASK,
        prefixes: Mapping[str, ExportedPrefix | str | Path] | None = None,
    ):
        """Build the device state and compile every program (`buckets`: prompt lengths a
        prefill is padded to, default powers of two from 16 to max_len)."""
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.max_waiting = max_waiting
        self.eos_id: int | None = tokenizer.eos_token_id
        self.programs = Programs(
            model,
            slots=slots,
            max_len=max_len,
            prefix_capacity=prefix_capacity,
            prefix_max_length=prefix_max_length,
            buckets=buckets,
            beam_sizes=beam_sizes,
            banned_ids=banned_ids,
            eos_id=self.eos_id,
            mesh=mesh,
        )
        self._lock = threading.RLock()  # queue, prefixes, counters
        self._device = threading.Lock()  # the device state (table and cache)
        self._waiting: collections.deque[_Request] = collections.deque()
        self._slots: list[_Request | None] = [None] * slots
        self._prefixes: dict[str, PrefixInfo] = {}
        self._entries: list[str | None] = [None] * prefix_capacity
        self._pending = [0] * prefix_capacity  # waiting requests per entry
        self._ids = itertools.count()
        self._seeds = np.random.default_rng()
        self._steps = 0
        self._requests: collections.Counter[str] = collections.Counter()
        self._tokens: collections.Counter[str] = collections.Counter()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        for name, source in (prefixes or {}).items():
            self.load_prefix(name, source)

    @property
    def max_len(self) -> int:
        """Slot length: a request's prefix, prompt and max_tokens must fit in it."""
        return self.programs.max_len

    # ------------------------------------------------------------------ prefixes

    def load_prefix(self, name: str, source: ExportedPrefix | str | Path) -> PrefixInfo:
        """Read, check and write a prefix into a free table entry (no recompilation)."""
        with self._lock:
            if name == self.base_name or name in self._prefixes:
                raise PrefixLoadError(f"the name {name!r} is taken (loaded: {self._names()})")
            free = [i for i, n in enumerate(self._entries) if n is None and not self._pending[i]]
            if not free:
                raise PrefixLoadError(
                    f"the prefix table is full ({len(self._entries)} entries): unload one first"
                )
            entry = free[0]
            self._entries[entry] = name  # reserved while reading
        try:
            info = self.programs.check_prefix(name, source, entry)
            with self._device:
                self.programs.write_prefix(entry, info.exported)
        except Exception as e:
            with self._lock:
                self._entries[entry] = None
            if isinstance(e, PrefixLoadError | ValueError | OSError):  # the files' fault
                raise PrefixLoadError(str(e)) from None
            raise
        with self._lock:
            self._prefixes[name] = info.info
        return info.info

    def unload_prefix(self, name: str) -> None:
        """Forget a prefix; running requests keep it (it is in their slots), waiting ones
        still get it, and its entry is reused once none waits for it."""
        with self._lock:
            if name not in self._prefixes:
                raise UnknownPrefixError(f"no prefix {name!r} is loaded; loaded: {self._names()}")
            info = self._prefixes.pop(name)
            self._entries[info.index] = None

    def prefixes(self) -> dict[str, PrefixInfo]:
        with self._lock:
            return dict(self._prefixes)

    def _names(self) -> str:
        return ", ".join(repr(n) for n in self._prefixes) or "none"

    # ------------------------------------------------------------------ requests

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        prefix: str | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> RequestHandle:
        """Queue a request; raises ValueError (bad params or prompt), UnknownPrefixError,
        RequestTooLongError or QueueFullError."""
        params.validate()
        prompt = [int(t) for t in prompt_ids]
        vocab = self.programs.vocab_size
        if not prompt:
            raise ValueError("the prompt is empty")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if params.beam_size > 1 and params.beam_size not in self.programs.beam_sizes:
            raise ValueError(
                f"beam_size must be 1 or one of {sorted(self.programs.beam_sizes)} (declared "
                f"at start-up), got {params.beam_size}"
            )
        with self._lock:
            if prefix is None or prefix == self.base_name:
                name, entry, p, after = self.base_name, -1, 0, False
            elif prefix in self._prefixes:
                info = self._prefixes[prefix]
                name, entry, p, after = prefix, info.index, info.length, info.positions_after_prefix
            else:
                raise UnknownPrefixError(
                    f"unknown model {prefix!r}; loaded prefixes: {self._names()} (or "
                    f"{self.base_name!r} for the base model)"
                )
            self._check_fits(len(prompt), params.max_tokens, p, after)
            free_slots = sum(slot is None for slot in self._slots)  # admitted next step
            if len(self._waiting) - free_slots >= self.max_waiting:
                raise QueueFullError(f"the waiting queue is full ({self.max_waiting} requests)")
            seed = int(self._seeds.integers(2**63)) if params.seed is None else params.seed
            handle = RequestHandle(next(self._ids), on_event)
            request = _Request(
                handle, prompt, params, name, entry, seed, TextStream(self.tokenizer, params.stop)
            )
            self._waiting.append(request)
            if entry >= 0:
                self._pending[entry] += 1
        self._wake.set()
        return handle

    def _check_fits(self, n: int, max_tokens: int, p: int, after: bool) -> None:
        """RequestTooLongError unless prefix + prompt + max_tokens fit a slot (and the
        model's learned positions, if any)."""
        pg = self.programs
        total = p + n + max_tokens
        if n > pg.buckets[-1] or total > pg.max_len:
            raise RequestTooLongError(
                f"prompt of {n} tokens + max_tokens {max_tokens} + prefix of {p} = {total} "
                f"exceeds the slot length {pg.max_len} (prompts up to {pg.buckets[-1]} tokens)"
            )
        c = pg.config
        if (
            c.positions == "learned"
            and n + max_tokens + (p if after else 0) > c.max_position_embeddings
        ):
            raise RequestTooLongError(
                f"prompt of {n} tokens + max_tokens {max_tokens} exceed the model's "
                f"{c.max_position_embeddings} positions"
            )

    # ------------------------------------------------------------------ the loop

    def step(self) -> bool:
        """Drop cancelled requests, admit waiting ones into free slots (prefill + insert;
        beam requests run whole), run one generate step, emit events. Returns whether
        any request is running or waiting afterwards."""
        with self._device:
            self._drop_cancelled()
            self._admit()
            running = [i for i, r in enumerate(self._slots) if r is not None]
            if running:
                try:
                    tokens = self.programs.generate()
                except Exception as e:
                    log.exception("the generate step failed")
                    for i in running:
                        self._finish(i, "error", f"generate failed: {type(e).__name__}: {e}")
                else:
                    for i in running:
                        self._accept(i, int(tokens[i]))
                self._steps += 1
        with self._lock:
            return bool(self._waiting) or any(r is not None for r in self._slots)

    def _drop_cancelled(self) -> None:
        with self._lock:
            cancelled = [r for r in self._waiting if r.handle.cancelled]
            for r in cancelled:
                self._waiting.remove(r)
                self._release_entry(r)
        for r in cancelled:
            r.handle._emit(self._event(r, (), "", "cancelled"))
        for i, r in enumerate(self._slots):
            if r is not None and r.handle.cancelled:
                self._finish(i, "cancelled")

    def _admit(self) -> None:
        while True:
            with self._lock:
                free = [i for i, r in enumerate(self._slots) if r is None]
                if not self._waiting or (not free and self._waiting[0].params.beam_size == 1):
                    return
                request = self._waiting.popleft()
                self._release_entry(request)
            slot = free[0] if free else -1
            try:
                if request.params.beam_size > 1:
                    self._run_beam(request)
                    continue
                first = self.programs.prefill_insert(
                    slot, request.prompt, request.entry, request.params, request.seed
                )
            except Exception as e:
                log.exception("admitting request %d failed", request.handle.id)
                if slot >= 0:
                    self.programs.free(slot)
                msg = f"{type(e).__name__}: {e}"
                request.handle._emit(self._event(request, (), "", "error", msg))
                continue
            self._slots[slot] = request
            self._accept(slot, first)

    def _run_beam(self, r: _Request) -> None:
        ids = self.programs.beam(r.prompt, r.entry, r.params)
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id) + 1]
        reason = "stop" if self.eos_id in ids else "length"
        r.tokens = ids
        text = r.text.add([t for t in ids if t != self.eos_id], final=True)
        reason = "stop" if r.text.stopped else reason
        self._count(r)
        r.handle._emit(self._event(r, tuple(ids), text, reason))

    def _accept(self, slot: int, token: int) -> None:
        """A slot's new token: update its request, emit an event, finish it if done."""
        r = self._slots[slot]
        r.tokens.append(token)
        eos = token == self.eos_id and not r.params.ignore_eos
        length = len(r.tokens) >= r.params.max_tokens
        text = r.text.add([] if token == self.eos_id else [token], final=eos or length)
        if r.text.stopped or eos:
            self._finish(slot, "stop", token=token, text=text)
        elif length:
            self._finish(slot, "length", token=token, text=text)
        else:
            self.programs.advance(slot, token)
            r.handle._emit(self._event(r, (token,), text, None))

    def _finish(self, slot: int, reason: str, error: str = "", *, token=None, text="") -> None:
        r = self._slots[slot]
        self._slots[slot] = None
        self.programs.free(slot)
        self._count(r)
        tokens = () if token is None else (token,)
        r.handle._emit(self._event(r, tokens, text, reason, error))

    def _count(self, r: _Request) -> None:
        with self._lock:
            self._requests[r.model_name] += 1
            self._tokens[r.model_name] += len(r.tokens)

    def _release_entry(self, r: _Request) -> None:
        if r.entry >= 0:
            self._pending[r.entry] -= 1

    def _event(self, r: _Request, ids, text: str, reason: str | None, error: str = "") -> Event:
        return Event(
            token_ids=tuple(ids),
            text=text,
            finish_reason=reason,
            prompt_tokens=len(r.prompt),
            completion_tokens=len(r.tokens),
            time=time.monotonic(),
            error=error,
        )

    def run_until_idle(self) -> None:
        """Step until no request runs or waits (batch mode, tests)."""
        while self.step():
            pass

    def start(self) -> None:
        """Run the loop on a background thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="prefix-jax-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop (requests still running stay in their slots)."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                busy = self.step()
            except Exception:
                log.exception("engine step failed")
                busy = False
            if not busy:
                self._wake.wait(timeout=0.1)

    def stats(self) -> EngineStats:
        with self._lock:
            in_use = sum(r is not None for r in self._slots)
            return EngineStats(
                slots=len(self._slots),
                slots_in_use=in_use,
                running=in_use,
                waiting=len(self._waiting),
                steps=self._steps,
                compilations=self.programs.warmup_compilations,
                compilations_after_warmup=self.programs.compilations_after_warmup,
                requests=dict(self._requests),
                tokens=dict(self._tokens),
            )


__all__ = [
    "Engine",
    "EngineError",
    "EngineStats",
    "Event",
    "PrefixInfo",
    "PrefixLoadError",
    "QueueFullError",
    "RequestHandle",
    "RequestTooLongError",
    "SamplingParams",
    "UnknownPrefixError",
]
