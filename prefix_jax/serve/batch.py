r"""One base model, many prefixes: mixed-task batched generation (the engine of
`prefix-jax serve`, `prefix_jax.cli.serve`).

Each input line is a JSON object `{"id", "task", "input"}` plus optional decoding options
(`max_new_tokens`, `beam_size`, `min_new_tokens`, `length_penalty`, `ban_newline`;
the server's defaults give the rest). `task` names a loaded prefix; `null` or `"base"` decodes
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
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from prefix_jax.data import DEFAULT_SEPARATOR, pick_bucket
from prefix_jax.data.tokens import left_pad, pad_id_of, until_eos
from prefix_jax.infer.decode import beam_search, greedy, newline_token_ids
from prefix_jax.models.transformer import Transformer
from prefix_jax.serve.prefix_bank import NO_PREFIX, PrefixRegistry, UnknownTaskError
from prefix_jax.serve.requests import (
    DecodeOptions,
    PreparedRequest,
    Request,
    RequestError,
    RequestReader,
)

log = logging.getLogger(__name__)


class Server:
    """A base model, a tokenizer and a PrefixRegistry: batched mixed-task generation."""

    def __init__(
        self,
        model: Transformer,
        tokenizer,
        registry: PrefixRegistry,
        *,
        defaults: DecodeOptions | None = None,
        batch_size: int = 16,
        max_input_tokens: int = 512,
        max_new_tokens_limit: int = 1024,
        max_beam_size: int = 16,
        base_separator: str | None = DEFAULT_SEPARATOR,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if registry.config != model.config:
            raise ValueError("the registry was built for another model")
        self.requests = RequestReader(
            tokenizer,
            registry,
            model.config,
            defaults=defaults or DecodeOptions(),
            max_input_tokens=max_input_tokens,
            max_new_tokens_limit=max_new_tokens_limit,
            max_beam_size=max_beam_size,
            base_separator=base_separator,
        )
        self.model = model
        self.tokenizer = tokenizer
        self.registry = registry
        self.batch_size = batch_size
        self.eos_id: int | None = tokenizer.eos_token_id
        self.pad_id = pad_id_of(tokenizer)
        powers = (2**i for i in range(batch_size.bit_length()))
        self.batch_sizes = tuple(sorted({*powers, batch_size}))
        # Rows without a prefix join the batches of the convention most prefixes use.
        flags = [t.positions_after_prefix for t in registry.tasks.values()]
        self.base_after = collections.Counter(flags).most_common(1)[0][0] if flags else False
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
        prepared: list[PreparedRequest] = []
        for i, item in enumerate(requests):
            try:
                prepared.append(self.requests.prepare(i, item))
            except (RequestError, UnknownTaskError) as e:
                records[i] = _error_record(item, str(e))

        groups: dict[tuple, list[PreparedRequest]] = collections.defaultdict(list)
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

    def _decode(self, items: Sequence[PreparedRequest], options: DecodeOptions, after: bool):
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
