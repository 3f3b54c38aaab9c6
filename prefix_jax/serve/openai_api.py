"""An OpenAI-compatible HTTP front end over the serving engine (`prefix_jax.serve.engine`).

`create_app(engine, served_model_name=...)` is a FastAPI app: completions and chat
completions (streamed as server-sent events or whole), the model list, prefixes loaded and
unloaded at run time, `/health` and Prometheus `/metrics`. `run_server` serves it with
uvicorn and says when it listens.

The engine decodes in its own thread (the app's lifespan starts and stops it); each request
registers an `on_event` callback that hands events to the event loop with
`call_soon_threadsafe` (`serve/bridge.py`), so nothing on the loop ever blocks on the engine.
A request whose client goes away (mid-stream, or while waiting for a whole response) is
cancelled, which frees its slot at the engine's next step. The API key and the prefix root
are `serve/guard.py`'s; request shapes and error bodies `serve/protocol.py`'s.

Every error is an OpenAI error body `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from prefix_jax.data.tokens import plain_ids, separator_ids
from prefix_jax.serve.bridge import Generation, disconnected, until
from prefix_jax.serve.engine import (
    PrefixLoadError,
    QueueFullError,
    RequestTooLongError,
    SamplingParams,
    UnknownPrefixError,
)
from prefix_jax.serve.guard import BearerKey, resolve_under
from prefix_jax.serve.prefix_bank import PrefixInfo
from prefix_jax.serve.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    LoadPrefix,
    Reply,
    UnloadPrefix,
    bad_value,
    check_supported,
    error_body,
    validation_message,
)
from prefix_jax.serve.telemetry import Metrics

log = logging.getLogger(__name__)


def create_app(
    engine,
    *,
    served_model_name: str,
    api_key: str | None = None,
    prefix_root: str | Path | None = None,
) -> FastAPI:
    """The app over a constructed engine (its programs compiled); the app's lifespan starts
    the engine's thread and stops it at shutdown. `prefix_root` is the one directory
    `/v1/load_prefix` may read under; without it, loading at run time is off."""
    root = None if prefix_root is None else Path(prefix_root).resolve(strict=True)
    tokenizer = engine.tokenizer
    slot_length = engine.max_len  # prefix + prompt + max_tokens fit in it
    metrics = Metrics(engine)
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="prefix_jax", lifespan=lifespan)
    if api_key:
        app.add_middleware(BearerKey, key=api_key)

    def answer(error: ApiError) -> JSONResponse:
        metrics.errors.labels(str(error.status)).inc()
        return error.response()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return answer(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError):
        message, param = validation_message(error.errors())
        return answer(ApiError(400, message, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        return answer(ApiError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return answer(ApiError(500, f"internal error: {type(error).__name__}: {error}"))

    def prefix_of(model: str) -> PrefixInfo | None:
        """The loaded prefix a `model` field names (None: the base model); 404 otherwise."""
        if model == served_model_name:
            return None
        loaded = engine.prefixes()
        if model in loaded:
            return loaded[model]
        known = ", ".join([served_model_name, *sorted(loaded)])
        raise ApiError(
            404, f"model {model!r} does not exist; served: {known}", "model", "model_not_found"
        )

    def completion_ids(req: CompletionRequest, prefix: PrefixInfo | None) -> list[int]:
        """The prompt's ids; a prefix's training separator follows them, so the request
        reads as the prefix saw its inputs in training."""
        if isinstance(req.prompt, str):
            (ids,) = plain_ids(tokenizer, [req.prompt])
        else:
            ids = list(req.prompt)
            bad = [i for i in ids if i >= len(tokenizer)]
            if bad:
                raise ApiError(
                    400,
                    f"token id {bad[0]} is outside the vocabulary (size {len(tokenizer)})",
                    "prompt",
                )
        if prefix is not None:
            ids += separator_ids(tokenizer, prefix.separator)
        return ids

    def chat_ids(req: ChatRequest) -> list[int]:
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(
                400, "this model's tokenizer has no chat template; use /v1/completions", "messages"
            )
        try:
            text = tokenizer.apply_chat_template(
                req.chat(), tokenize=False, add_generation_prompt=True
            )
        except Exception as e:  # the template's own checks (role order, ...) raise
            raise ApiError(
                400, f"the chat template rejects the messages: {e}", "messages"
            ) from None
        (ids,) = plain_ids(tokenizer, [text])
        return ids

    def sampling(req, max_tokens: int, beam_size: int = 1) -> SamplingParams:
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=req.stops(),
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
            beam_size=beam_size,
        )
        try:
            params.validate()
        except ValueError as e:
            raise bad_value(e) from None
        return params

    def submit(ids: list[int], params: SamplingParams, prefix: PrefixInfo | None, arrival):
        if not ids:
            raise ApiError(400, "the prompt is empty", "prompt")
        try:
            return Generation(engine, ids, params, prefix and prefix.name, arrival)
        except UnknownPrefixError as e:  # unloaded since `prefix_of` looked
            raise ApiError(404, str(e), "model", "model_not_found") from None
        except RequestTooLongError as e:
            raise ApiError(400, str(e), "max_tokens", "context_length_exceeded") from None
        except QueueFullError as e:
            raise ApiError(429, str(e), None, "queue_full") from None
        except ValueError as e:
            raise bad_value(e) from None

    async def respond(request: Request, req, reply: Reply, gen: Generation):
        if req.stream:
            with_usage = bool(req.stream_options and req.stream_options.include_usage)
            # The background task closes a stream whose client left before it started
            # (its generator never ran, so its `finally` cannot).
            return EventSourceResponse(
                _stream(reply, gen, with_usage, req.model),
                sep="\n",
                ping=15,
                background=BackgroundTask(gen.close, metrics, req.model),
            )
        watcher = asyncio.ensure_future(disconnected(request))
        parts: list[str] = []
        try:
            async for event in until(gen.events(), watcher):
                parts.append(event.text)
        finally:
            watcher.cancel()
            gen.close(metrics, req.model)
        if gen.finish_reason is None:  # the client left; nobody reads this
            return Response(status_code=499)
        if gen.finish_reason == "error":
            raise ApiError(500, f"the engine failed on this request: {gen.error}")
        return reply.full(
            "".join(parts), gen.finish_reason, gen.prompt_tokens, gen.times.completion_tokens
        )

    async def _stream(reply: Reply, gen: Generation, with_usage: bool, model: str):
        try:
            if reply.chat:  # OpenAI's first chat chunk names the role
                yield json.dumps(reply.chunk("", role=True, with_usage=with_usage))
            async for event in gen.events():
                reason = event.finish_reason
                if reason == "error":
                    message = f"the engine failed on this request: {gen.error}"
                    yield json.dumps(error_body(message, "server_error"))
                    break
                if event.text or reason is not None:
                    chunk = reply.chunk(event.text, reason, with_usage=with_usage)
                    yield json.dumps(chunk)
            if with_usage:
                chunk = reply.usage_chunk(gen.prompt_tokens, gen.times.completion_tokens)
                yield json.dumps(chunk)
            yield "[DONE]"
        finally:  # also when the client disconnects: the generator is closed
            gen.close(metrics, model)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        arrival = time.perf_counter()  # the body is parsed; TTFT counts from here
        check_supported(req)
        prefix = prefix_of(req.model)
        ids = completion_ids(req, prefix)
        gen = submit(ids, sampling(req, req.max_tokens, req.best_of or 1), prefix, arrival)
        return await respond(request, req, Reply(req.model, chat=False), gen)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        arrival = time.perf_counter()
        check_supported(req)
        prefix = prefix_of(req.model)
        ids = chat_ids(req)
        # OpenAI's chat default: the reply may fill what the slot leaves
        used = len(ids) + (0 if prefix is None else prefix.length)
        limit = req.limit() or max(1, slot_length - used)
        gen = submit(ids, sampling(req, limit), prefix, arrival)
        return await respond(request, req, Reply(req.model, chat=True), gen)

    def model_card(name: str, info=None) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": started, "owned_by": "prefix_jax"}
        card |= {"root": served_model_name, "max_model_len": slot_length}
        if info is None:
            return card | {"parent": None}
        return card | {
            "parent": served_model_name,
            "prefix_length": info.length,
            "separator": info.separator,
        }

    @app.get("/v1/models")
    async def models():
        cards = [model_card(served_model_name)]
        cards += [model_card(name, info) for name, info in sorted(engine.prefixes().items())]
        return {"object": "list", "data": cards}

    @app.post("/v1/load_prefix")
    async def load_prefix(req: LoadPrefix):
        if root is None:
            raise ApiError(
                403,
                "loading prefixes at run time is off: start the server with "
                "--prefix-root DIR to allow loading from under DIR",
            )
        if req.name == served_model_name or req.name in engine.prefixes():
            raise ApiError(400, f"model {req.name!r} is already served; unload it first", "name")
        path = resolve_under(root, req.path)
        try:
            info = await asyncio.to_thread(engine.load_prefix, req.name, path)
        except PrefixLoadError as e:
            raise ApiError(400, f"prefix {req.name!r} failed to load: {e}", "path") from None
        return model_card(req.name, info)

    @app.post("/v1/unload_prefix")
    async def unload_prefix(req: UnloadPrefix):
        if req.name == served_model_name:
            raise ApiError(400, "the base model cannot be unloaded", "name")
        try:
            await asyncio.to_thread(engine.unload_prefix, req.name)
        except UnknownPrefixError as e:
            raise ApiError(404, str(e), "name", "model_not_found") from None
        return {"id": req.name, "object": "model", "deleted": True}

    @app.get("/health")
    async def health():
        stats = engine.stats()  # answers unless the engine is wedged
        return {"status": "ok", "slots_in_use": stats.slots_in_use, "waiting": stats.waiting}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


class _Server(uvicorn.Server):
    """uvicorn, calling `ready(url)` once its sockets listen."""

    def __init__(self, config: uvicorn.Config, ready: Callable[[str], None]):
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.ready(f"http://{f'[{host}]' if ':' in host else host}:{port}")


def run_server(app: FastAPI, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Serve `app` until SIGINT / SIGTERM (open streams get 5 s, then are cut); port 0
    picks a free port (`ready` gets the URL)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    _Server(config, ready).run()
