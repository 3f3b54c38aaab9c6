"""Serving requests: their fields and decoding options, checked, and turned into the
prompt ids the task's prefix saw in training. A bad request raises `RequestError` with the
message its error record carries; the others are still served."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from prefix_jax.data.tokens import plain_ids, separator_ids
from prefix_jax.models.config import ModelConfig
from prefix_jax.serve.prefix_bank import BASE_TASK, PrefixRegistry

REQUEST_FIELDS = ("id", "task", "input")
_OPTION_TYPES = {
    "max_new_tokens": int,
    "beam_size": int,
    "min_new_tokens": int,
    "length_penalty": float,
    "ban_newline": bool,
}


class RequestError(ValueError):
    """A request that cannot be served; it gets an error record, the others are served."""


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """Per-request decoding options; requests with equal options can share a batch."""

    max_new_tokens: int = 64
    beam_size: int = 1  # 1 = greedy
    min_new_tokens: int = 0
    length_penalty: float = 1.0  # beam search only
    ban_newline: bool = False  # never generate a token containing a newline

    def updated(self, overrides: Mapping[str, Any]) -> DecodeOptions:
        """These defaults with a request's overrides, type-checked."""
        values = {}
        for name, value in overrides.items():
            if name not in _OPTION_TYPES:
                known = ", ".join([*REQUEST_FIELDS, *_OPTION_TYPES])
                raise RequestError(f"unknown field {name!r}; known: {known}")
            kind = _OPTION_TYPES[name]
            allowed = (bool,) if kind is bool else (int, float) if kind is float else (int,)
            if not isinstance(value, allowed) or (kind is not bool and isinstance(value, bool)):
                raise RequestError(f"{name} must be {kind.__name__}, got {value!r}")
            values[name] = kind(value)
        options = dataclasses.replace(self, **values)
        if options.beam_size == 1:  # greedy ignores it: do not split batches over it
            options = dataclasses.replace(options, length_penalty=1.0)
        return options

    def check(self, max_new_tokens_limit: int, max_beam_size: int) -> None:
        if not 1 <= self.max_new_tokens <= max_new_tokens_limit:
            raise RequestError(
                f"max_new_tokens must be in [1, {max_new_tokens_limit}], got {self.max_new_tokens}"
            )
        if not 1 <= self.beam_size <= max_beam_size:
            raise RequestError(f"beam_size must be in [1, {max_beam_size}], got {self.beam_size}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise RequestError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )
        if not math.isfinite(self.length_penalty):
            raise RequestError(f"length_penalty must be finite, got {self.length_penalty}")


@dataclasses.dataclass
class Request:
    """One generation request: `task` None (or "base") means the base model alone."""

    id: Any
    task: str | None
    input: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any) -> Request:
        if not isinstance(obj, Mapping):
            raise RequestError(f"a request must be a JSON object, got {type(obj).__name__}")
        missing = [f for f in REQUEST_FIELDS if f not in obj]
        if missing:
            raise RequestError(f"request lacks {', '.join(missing)}")
        options = {k: v for k, v in obj.items() if k not in REQUEST_FIELDS}
        return cls(id=obj["id"], task=obj["task"], input=obj["input"], options=options)


@dataclasses.dataclass
class PreparedRequest:
    """A valid request as the engine takes it: its prompt ids and options."""

    position: int
    request: Request
    prompt: list[int]
    options: DecodeOptions


class RequestReader:
    """Requests -> prompts a batch can decode: fields and options checked against the
    server's limits, and the prompt tokenized exactly as the task's prefix saw it in
    training (input, then the separator its export recorded)."""

    def __init__(
        self,
        tokenizer,
        registry: PrefixRegistry,
        model_config: ModelConfig,
        *,
        defaults: DecodeOptions,
        max_input_tokens: int,
        max_new_tokens_limit: int,
        max_beam_size: int,
        base_separator: str | None,
    ):
        if max_input_tokens < 1:
            raise ValueError(f"max_input_tokens must be positive, got {max_input_tokens}")
        defaults.check(max_new_tokens_limit, max_beam_size)
        self.tokenizer = tokenizer
        self.registry = registry
        self.model_config = model_config
        self.defaults = defaults
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens_limit = max_new_tokens_limit
        self.max_beam_size = max_beam_size
        self.base_separator = base_separator
        self._separator_ids: dict[str | None, list[int]] = {}

    def prompt_ids(self, task: str | None, text: str) -> list[int]:
        """`input separator` token ids, exactly as the task's prefix saw in training."""
        ids, _ = self._prompt(task, text)
        return ids

    def _prompt(self, task: str | None, text: str) -> tuple[list[int], int]:
        if task is None or task == BASE_TASK:
            separator = self.base_separator
        else:
            separator = self.registry.task(task).separator
        (source,) = plain_ids(self.tokenizer, [text])
        return source + self._separator(separator), len(source)

    def _separator(self, separator: str | None) -> list[int]:
        if separator not in self._separator_ids:
            try:
                self._separator_ids[separator] = separator_ids(self.tokenizer, separator)
            except ValueError as e:
                raise RequestError(str(e)) from None
        return self._separator_ids[separator]

    def prepare(self, position: int, item: Request | Mapping) -> PreparedRequest:
        """`item` checked and tokenized; raises RequestError or UnknownTaskError."""
        request = item if isinstance(item, Request) else Request.from_json(item)
        task = request.task
        if task is not None and not isinstance(task, str):
            raise RequestError(f"task must be a string or null, got {task!r}")
        after, prefix_length = False, 0
        if task is not None and task != BASE_TASK:
            info = self.registry.task(task)
            after, prefix_length = info.positions_after_prefix, info.length
        if not isinstance(request.input, str):
            raise RequestError(f"input must be a string, got {type(request.input).__name__}")
        if not request.input.strip():
            raise RequestError("empty input")
        options = self.defaults.updated(request.options)
        options.check(self.max_new_tokens_limit, self.max_beam_size)
        prompt, n_source = self._prompt(task, request.input)
        if n_source > self.max_input_tokens:
            raise RequestError(
                f"input too long: {n_source} tokens, the limit is {self.max_input_tokens}"
            )
        c = self.model_config
        positions = len(prompt) + options.max_new_tokens + (prefix_length if after else 0)
        if c.positions == "learned" and positions > c.max_position_embeddings:
            raise RequestError(
                f"input too long: prompt ({len(prompt)} tokens) + max_new_tokens "
                f"({options.max_new_tokens}) exceed the model's {c.max_position_embeddings} "
                "positions"
            )
        return PreparedRequest(position, request, prompt, options)
