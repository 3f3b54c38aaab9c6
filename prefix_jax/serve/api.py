"""The serving engine's public types: sampling options, events, request handles, stats
and the errors the HTTP layer maps to status codes (re-exported by `serve/engine.py`)."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)


class EngineError(Exception):
    """A request or prefix the engine cannot take (the HTTP layer maps subclasses)."""


class UnknownPrefixError(EngineError):
    """No prefix of that name is loaded."""


class RequestTooLongError(EngineError):
    """Prefix + prompt + max_tokens do not fit a slot."""


class QueueFullError(EngineError):
    """The waiting queue holds max_waiting requests."""


class PrefixLoadError(EngineError):
    """A prefix could not be loaded (unreadable, does not fit the model or the table)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request decodes; `validate` names a bad field and its allowed range."""

    max_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy (exact: equals infer.decode.greedy)
    top_p: float = 1.0
    seed: int | None = None  # per-request PRNG seed (reproducible sampling)
    stop: tuple[str, ...] = ()  # stop strings; text is cut before the stop string
    ignore_eos: bool = False
    min_tokens: int = 0  # eos is banned before this many tokens
    ban_tokens: bool = False  # never generate the engine's `banned_ids` (e.g. newlines)
    beam_size: int = 1  # > 1: beam search (a size declared at start-up), temperature 0
    length_penalty: float = 1.0  # beam search only

    def validate(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise bad("max_tokens", "an integer >= 1")
        if not _is_real(self.temperature) or not 0.0 <= self.temperature <= 100.0:
            raise bad("temperature", "a number in [0, 100]")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "a number in (0, 1]")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**64):
            raise bad("seed", "null or an integer in [0, 2**64)")
        if not isinstance(self.stop, tuple | list) or not all(
            isinstance(s, str) and s for s in self.stop
        ):
            raise bad("stop", "a sequence of non-empty strings")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise bad("min_tokens", f"an integer in [0, max_tokens={self.max_tokens}]")
        if not _is_int(self.beam_size) or self.beam_size < 1:
            raise bad("beam_size", "an integer >= 1")
        if self.beam_size > 1 and self.temperature != 0:
            raise bad("temperature", "0 with beam search")
        if not _is_real(self.length_penalty) or not np.isfinite(self.length_penalty):
            raise bad("length_penalty", "a finite number")


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, int | float | np.number) and not isinstance(x, bool) and np.isfinite(x)


@dataclasses.dataclass(frozen=True)
class Event:
    """What a request yields, in order; the last one has a finish_reason."""

    token_ids: tuple[int, ...]  # new tokens since the last event (eos included, if any)
    text: str  # new text since the last event
    finish_reason: str | None  # None while running; "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0  # so far
    time: float = 0.0  # time.monotonic() of the event
    error: str = ""  # why, when finish_reason is "error"


class RequestHandle:
    """A submitted request: its events (blocking iterator) and cancel()."""

    def __init__(self, request_id: int, on_event: Callable[[Event], None] | None):
        self.id = request_id
        self._events: queue.Queue[Event] = queue.Queue()
        self._on_event = on_event
        self._cancelled = threading.Event()
        self.done = threading.Event()

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the engine's next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they come, ending after the one with a finish_reason."""
        while True:
            event = self._events.get(timeout=timeout)
            yield event
            if event.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> tuple[list[int], str, str]:
        """(all token ids, all text, finish_reason), waiting for the end."""
        ids, text, reason = [], [], None
        for event in self.events(timeout):
            ids += event.token_ids
            text.append(event.text)
            reason = event.finish_reason
        return ids, "".join(text), reason

    def _emit(self, event: Event) -> None:
        self._events.put(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a callback must not stop the engine
                log.exception("on_event callback of request %d failed", self.id)
        if event.finish_reason is not None:
            self.done.set()


@dataclasses.dataclass
class EngineStats:
    slots: int
    slots_in_use: int
    running: int
    waiting: int
    steps: int
    compilations: int  # while the engine was being built (warm-up)
    compilations_after_warmup: int  # must stay 0
    requests: dict[str, int]  # finished requests per model name (prefix or base)
    tokens: dict[str, int]  # generated tokens per model name
