"""Engine requests seen from the event loop: the engine's thread hands each event over
with `call_soon_threadsafe` (nothing on the loop waits on the engine), and a client that
goes away is noticed so its request can be cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from prefix_jax.serve.telemetry import Metrics, RequestTimes


class Generation:
    """One engine request as the event loop sees it: events arrive on an asyncio queue,
    stamped with the time the engine emitted them."""

    def __init__(self, engine, ids: list[int], params, prefix: str | None, arrival: float):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.times = RequestTimes(arrival=arrival)
        self.prompt_tokens = len(ids)
        self.finish_reason: str | None = None
        self.error = ""
        self.closed = False
        self.handle = engine.submit(ids, params, prefix=prefix, on_event=self._on_event)

    def _on_event(self, event) -> None:  # the engine's thread
        stamped = (time.perf_counter(), event)
        with contextlib.suppress(RuntimeError):  # the loop has closed: server shutdown
            self.loop.call_soon_threadsafe(self.queue.put_nowait, stamped)

    async def events(self) -> AsyncIterator[Any]:
        """Events up to and including the one with a finish reason."""
        while self.finish_reason is None:
            when, event = await self.queue.get()
            self.times.tokens(when, len(event.token_ids))
            self.finish_reason = event.finish_reason
            self.error = event.error
            yield event

    def close(self, metrics: Metrics, model: str) -> None:
        """Cancel the request unless it finished, and record it (once; later calls are
        no-ops)."""
        if self.closed:
            return
        self.closed = True
        if self.finish_reason is None:
            self.handle.cancel()
        reason = self.finish_reason or "cancelled"
        metrics.finished(model, self.times, time.perf_counter(), self.prompt_tokens, reason)


async def disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until(events: AsyncIterator[Any], disconnected: asyncio.Future) -> AsyncIterator[Any]:
    """`events` until the client disconnects (then the caller cancels the request)."""
    while True:
        step = asyncio.ensure_future(anext(events, None))
        await asyncio.wait({step, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        if not step.done():
            step.cancel()
            return
        event = step.result()
        if event is None:
            return
        yield event
