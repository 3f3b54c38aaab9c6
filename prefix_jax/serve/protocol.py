"""OpenAI's request, response and error shapes, as this server accepts and writes them.

Requests are strict pydantic models: a wrong type is an error, not a coercion ("5" is not
an int), and an unknown field is an error naming it, as OpenAI's own API answers. Fields
OpenAI defines but this server does not implement (`n` above 1, `logprobs`, `echo`,
penalties, `logit_bias`, `suffix`) are accepted only at their neutral value, and
`unsupported` names the first one set otherwise, so the client learns which field to drop.
`best_of` > 1 (completions) is beam search of that width at temperature 0, returning the
best beam, for the widths the server declared at start-up (`--beam-sizes`). `ignore_eos`
and `min_tokens` are vLLM's extensions (fixed-length outputs, e.g. for benchmarks).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

Probability = Annotated[float, Field(gt=0.0, le=1.0)]
NonNegativeTokens = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields both endpoints share."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Probability = 1.0
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for the caller's own logs; ignored
    n: Annotated[int, Field(ge=1)] = 1
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    logit_bias: dict[str, float] | None = None
    # vLLM's extensions: fixed-length outputs for benchmarks, no eos before min_tokens
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0

    def stops(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(s for s in stop if s)

    def unsupported(self) -> str | None:
        """The first field set to something this server does not implement, or None."""
        neutral = {
            "n": 1,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "logit_bias": {},
            **self._neutral(),
        }
        for name, value in neutral.items():
            got = getattr(self, name)
            if got is not None and got != value:
                return name
        return None

    def _neutral(self) -> dict[str, Any]:
        return {}


class CompletionRequest(_Sampling):
    """`POST /v1/completions`: `prompt` is one text or one list of token ids."""

    prompt: str | list[NonNegativeTokens]
    max_tokens: Annotated[int, Field(ge=1)] = 16  # OpenAI's default
    best_of: Annotated[int, Field(ge=1)] | None = None
    logprobs: Annotated[int, Field(ge=0)] | None = None
    echo: bool = False
    suffix: str | None = None

    def _neutral(self) -> dict[str, Any]:
        return {"logprobs": None, "echo": False, "suffix": None}


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    """`POST /v1/chat/completions`; `max_completion_tokens` is OpenAI's newer name for
    `max_tokens`. Without either, the reply may fill the slot."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0)] | None = None

    def _neutral(self) -> dict[str, Any]:
        return {"logprobs": False, "top_logprobs": None}

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        """The messages as a chat template reads them (OpenAI's `developer` = `system`)."""
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None):
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Reply:
    """One response's id, creation time and model; builds its bodies and stream chunks."""

    def __init__(self, model: str, chat: bool):
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def _envelope(self, kind: str, choices: list[dict], **extra) -> dict[str, Any]:
        body = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        return {**body, "choices": choices, **extra}

    def full(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int):
        """The non-streamed response."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
            kind = "chat.completion"
        else:
            choice["text"] = text
            kind = "text_completion"
        return self._envelope(kind, [choice], usage=usage(prompt_tokens, completion_tokens))

    def chunk(
        self,
        text: str | None,
        finish_reason: str | None = None,
        *,
        role: bool = False,
        with_usage: bool = False,
    ) -> dict[str, Any]:
        """A stream chunk; with `stream_options.include_usage` every chunk has `usage: null`
        (OpenAI's convention) and `usage_chunk` ends the stream."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if self.chat:
            delta: dict[str, str] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
            kind = "chat.completion.chunk"
        else:
            choice["text"] = text or ""
            kind = "text_completion"
        extra = {"usage": None} if with_usage else {}
        return self._envelope(kind, [choice], **extra)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._envelope(kind, [], usage=usage(prompt_tokens, completion_tokens))


class LoadPrefix(_Strict):
    """`POST /v1/load_prefix`: `path` is read under the server's prefix root."""

    name: str = Field(min_length=1, max_length=256)
    path: str = Field(min_length=1)


class UnloadPrefix(_Strict):
    name: str = Field(min_length=1)


_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
}


class ApiError(Exception):
    """An error answered with `status` and an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = _KINDS.get(self.status, "invalid_request_error")
        body = error_body(self.message, kind, self.param, self.code)
        return JSONResponse(body, status_code=self.status)


# What a field with alternatives takes, for errors (pydantic reports each alternative).
_ALTERNATIVES = {
    "prompt": "a string or a list of token ids (one prompt per request)",
    "stop": "a string or a list of strings",
    "content": "a string or a list of text parts",
}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One clear message and the field it names, from pydantic's errors (the first)."""
    first = errors[0]
    loc = [part for part in first["loc"] if part != "body"]
    if first["type"] == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error')}", None
    if first["type"] == "extra_forbidden":
        return f"unknown or unsupported field {loc[-1]!r}", str(loc[-1])
    tags = [
        i for i, part in enumerate(loc) if isinstance(part, str) and (part == "str" or "[" in part)
    ]
    if tags:  # a field with alternatives: pydantic names each one tried
        path = ".".join(map(str, loc[: tags[0]]))
        return f"{path} must be {_ALTERNATIVES.get(path.split('.')[-1], 'valid')}", path
    param = ".".join(map(str, loc)) or None
    return (f"{param}: {first['msg']}" if param else f"request body: {first['msg']}"), param


def bad_value(error: ValueError) -> ApiError:
    """A 400 for the engine's ValueError; its message starts with the field it names."""
    message = str(error)
    field = message.split(" ", 1)[0]
    if field == "beam_size":  # what a request calls it
        field, message = "best_of", f"best_of is the beam width: {message}"
    known = CompletionRequest.model_fields.keys() | ChatRequest.model_fields.keys()
    return ApiError(400, message, field if field in known else None)


def check_supported(req) -> None:
    """A 400 naming the first OpenAI field set that this server does not implement."""
    field = req.unsupported()
    if field is not None:
        raise ApiError(
            400,
            f"{field} is not supported by this server; leave it at its default",
            field,
            "unsupported_parameter",
        )
