r"""One base model, many prefixes: mixed-task batched generation (the engine of
`prefix-jax serve`, `prefix_jax.cli.serve`).

Each input line is a JSON object `{"id", "task", "input"}` plus optional decoding options
(`max_new_tokens`, `beam_size`, `min_new_tokens`, `length_penalty`, `ban_newline`;
`Server.defaults` gives the rest). `task` names a loaded prefix; `null` or `"base"` decodes
with the base model alone. The prompt is `input` followed by the separator the prefix was
trained with (recorded in its export, else "\nTarget:\n"), as in training.

Requests of different tasks share batches: each row gathers its own prefix from the
registry's packed table (prefixes of different lengths are padded and masked, rows
without a prefix are all-masked, i.e. the base model) and a batch is decoded by one
compiled greedy or beam-search program. Requests are grouped by decoding options and by
the prefix's position convention (a static property of a batch), sorted by prompt length
and cut into batches whose size and prompt length are rounded up to powers of two, so few
programs are compiled. Output records follow the input order: `{"id", "task", "output"}`,
or `{"id", "task", "error"}` for a bad request (unknown task, empty or too long input, bad
option), or `{"line", "error"}` for a line that is not a JSON object with an id; every
other request is still answered.

Python API (load once, generate many):

    server = Server.load("smollm2", {"e2e": "runs/e2e/export", "webnlg": "..."})
    records = server.generate([{"id": 1, "task": "e2e", "input": "name[Aromi] ..."}])
    text = server.complete("webnlg", "Alan_Bean | birthPlace | Wheeler,_Texas")
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from prefix_jax.data import DEFAULT_SEPARATOR, pick_bucket
from prefix_jax.data.tokens import left_pad, pad_id_of, plain_ids, separator_ids, until_eos
from prefix_jax.infer.decode import beam_search, greedy, newline_token_ids
from prefix_jax.models.transformer import Transformer
from prefix_jax.serve.prefix_bank import BASE_TASK, NO_PREFIX, PrefixRegistry, UnknownTaskError

log = logging.getLogger(__name__)

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
class _Prepared:
    position: int
    request: Request
    task_index: int  # NO_PREFIX for the base model
    after: bool | None  # the prefix's position convention; None without prefix
    prompt: list[int]
    options: DecodeOptions


class Server:
    """A base model, a tokenizer and a PrefixRegistry: batched mixed-task generation."""

    def __init__(
        self,
        model: Transformer,
        tokenizer,
        registry: PrefixRegistry,
        *,
        defaults: DecodeOptions = DecodeOptions(),
        batch_size: int = 16,
        max_input_tokens: int = 512,
        max_new_tokens_limit: int = 1024,
        max_beam_size: int = 16,
        base_separator: str | None = DEFAULT_SEPARATOR,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_input_tokens < 1:
            raise ValueError(f"max_input_tokens must be positive, got {max_input_tokens}")
        if registry.config != model.config:
            raise ValueError("the registry was built for another model")
        defaults.check(max_new_tokens_limit, max_beam_size)
        self.model = model
        self.tokenizer = tokenizer
        self.registry = registry
        self.defaults = defaults
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens_limit = max_new_tokens_limit
        self.max_beam_size = max_beam_size
        self.base_separator = base_separator
        self.eos_id: int | None = tokenizer.eos_token_id
        self.pad_id = pad_id_of(tokenizer)
        powers = (2**i for i in range(batch_size.bit_length()))
        self.batch_sizes = tuple(sorted({*powers, batch_size}))
        # Rows without a prefix join the batches of the convention most prefixes use.
        flags = [t.positions_after_prefix for t in registry.tasks.values()]
        self.base_after = collections.Counter(flags).most_common(1)[0][0] if flags else False
        self._separator_ids: dict[str | None, list[int]] = {}
        self._banned: tuple[int, ...] | None = None
        self.last_stats: dict[str, float] = {}

    @classmethod
    def load(
        cls,
        model: str = "smollm2",
        prefixes: Mapping[str, str | Path] | None = None,
        *,
        dtype: str = "float32",
        **kwargs,
    ) -> Server:
        """Load the base model and tokenizer once, then every prefix against them."""
        from prefix_jax.models import load
        from prefix_jax.train import assemble as experiment

        transformer, tokenizer = load(model, dtype=experiment.dtype(dtype))
        if tokenizer is None:
            raise ValueError(f"model {model!r} has no tokenizer")
        registry = PrefixRegistry.from_dirs(transformer, prefixes or {})
        return cls(transformer, tokenizer, registry, **kwargs)

    # ------------------------------------------------------------------ prompts

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

    def _prepare(self, position: int, item: Request | Mapping) -> _Prepared:
        request = item if isinstance(item, Request) else Request.from_json(item)
        task = request.task
        if task is not None and not isinstance(task, str):
            raise RequestError(f"task must be a string or null, got {task!r}")
        if task is None or task == BASE_TASK:
            task_index, after, prefix_length = NO_PREFIX, None, 0
        else:
            info = self.registry.task(task)
            task_index, after, prefix_length = info.index, info.positions_after_prefix, info.length
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
        c = self.model.config
        positions = len(prompt) + options.max_new_tokens + (prefix_length if after else 0)
        if c.positions == "learned" and positions > c.max_position_embeddings:
            raise RequestError(
                f"input too long: prompt ({len(prompt)} tokens) + max_new_tokens "
                f"({options.max_new_tokens}) exceed the model's {c.max_position_embeddings} "
                "positions"
            )
        return _Prepared(position, request, task_index, after, prompt, options)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        requests: Iterable[Request | Mapping],
        *,
        progress: bool = False,
        return_tokens: bool = False,
    ) -> list[dict]:
        """One record per request, in request order: `{"id", "task", "output"}` (plus
        `"tokens"`, the generated ids before eos, with `return_tokens`), or `{"id", "task",
        "error"}`. A bad request never stops the others."""
        requests = list(requests)
        records: list[dict | None] = [None] * len(requests)
        prepared: list[_Prepared] = []
        for i, item in enumerate(requests):
            try:
                prepared.append(self._prepare(i, item))
            except (RequestError, UnknownTaskError) as e:
                records[i] = _error_record(item, str(e))

        groups: dict[tuple, list[_Prepared]] = collections.defaultdict(list)
        for p in prepared:
            after = self.base_after if p.after is None else p.after
            groups[(p.options, after)].append(p)
        batches = []
        for (options, after), items in groups.items():
            items.sort(key=lambda p: len(p.prompt))
            for start in range(0, len(items), self.batch_size):
                batches.append((options, after, items[start : start + self.batch_size]))

        generated, decode_s = 0, 0.0
        bar = tqdm(
            total=len(prepared), desc="serve", unit="req", dynamic_ncols=True, disable=not progress
        )
        for options, after, items in batches:
            start = time.perf_counter()
            try:
                sequences = self._decode(items, options, after)
            except Exception as e:  # a failed batch must not stop the others
                log.exception("decoding a batch of %d requests failed", len(items))
                for p in items:
                    records[p.position] = _error_record(
                        p.request, f"decoding failed: {type(e).__name__}: {e}"
                    )
                bar.update(len(items))
                continue
            decode_s += time.perf_counter() - start
            for p, row in zip(items, sequences, strict=True):
                ids, n = until_eos(row, self.eos_id)
                generated += n
                record = {
                    "id": p.request.id,
                    "task": p.request.task,
                    "output": self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                }
                if return_tokens:
                    record["tokens"] = ids
                records[p.position] = record
            bar.update(len(items))
            bar.set_postfix(tok_s=f"{generated / max(decode_s, 1e-9):.0f}")
        bar.close()
        self.last_stats = {
            "requests": len(requests),
            "errors": len(requests) - len(prepared),
            "batches": len(batches),
            "generated_tokens": generated,
            "decode_s": decode_s,
            "tokens_per_s": generated / max(decode_s, 1e-9),
        }
        return records  # type: ignore[return-value]

    def complete(self, task: str | None, text: str, **options) -> str:
        """The output for one input; raises RequestError (with the error record's message)."""
        request = Request(id=0, task=task, input=text, options=options)
        (record,) = self.generate([request])
        if "error" in record:
            raise RequestError(record["error"])
        return record["output"]

    def _decode(self, items: Sequence[_Prepared], options: DecodeOptions, after: bool):
        """Generated ids [len(items), max_new_tokens] of one batch, one compiled program."""
        n = len(items)
        size = pick_bucket(n, self.batch_sizes)
        prompts = [p.prompt for p in items] + [[self.pad_id]] * (size - n)
        length = max(16, _next_power_of_two(max(len(p) for p in prompts)))
        tokens, mask = left_pad(prompts, self.pad_id, multiple=length)
        task_ids = np.array([p.task_index for p in items] + [NO_PREFIX] * (size - n), np.int32)
        prefix = None
        if np.any(task_ids >= 0):
            longest = self.registry.max_length_of(task_ids)
            prefix_length = min(_next_power_of_two(longest), self.registry.max_length)
            prefix = self.registry.prefix_kv(
                task_ids, length=prefix_length, positions_after_prefix=after
            )
        kwargs = dict(
            max_new_tokens=options.max_new_tokens,
            prefix=prefix,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            min_new_tokens=options.min_new_tokens,
            banned_ids=self._newline_ids() if options.ban_newline else (),
        )
        if options.beam_size == 1:
            sequences = greedy(self.model, tokens, mask, **kwargs)
        else:
            sequences, _ = beam_search(
                self.model,
                tokens,
                mask,
                beam_size=options.beam_size,
                length_penalty=options.length_penalty,
                **kwargs,
            )
        return np.asarray(jax.device_get(sequences))[:n]

    def _newline_ids(self) -> tuple[int, ...]:
        if self._banned is None:
            self._banned = newline_token_ids(self.tokenizer)
        return self._banned

    # ------------------------------------------------------------------ JSON lines

    def serve_lines(self, lines: Iterable[str], **kwargs) -> list[dict]:
        """Records for JSON lines (blank lines skipped), in line order; a line that is not
        a JSON object with an id gets `{"line": n, "error"}` (n counts from 1)."""
        records: list[dict | None] = []
        requests, slots = [], []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                records.append({"line": n, "error": f"malformed JSON: {e}"})
                continue
            if not isinstance(obj, dict) or "id" not in obj:
                what = "has no id" if isinstance(obj, dict) else "is not a JSON object"
                records.append({"line": n, "error": f"request {what}"})
                continue
            slots.append(len(records))
            records.append(None)
            requests.append(obj)
        for slot, record in zip(slots, self.generate(requests, **kwargs), strict=True):
            records[slot] = record
        return records  # type: ignore[return-value]


def _error_record(item: Any, message: str) -> dict:
    if isinstance(item, Request):
        return {"id": item.id, "task": item.task, "error": message}
    if isinstance(item, Mapping):
        return {"id": item.get("id"), "task": item.get("task"), "error": message}
    return {"id": None, "task": None, "error": message}


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


