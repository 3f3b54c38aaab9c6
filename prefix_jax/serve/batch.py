r"""One base model, many prefixes: JSON-lines requests through the serving engine (the
batch mode of `prefix-jax serve`, `prefix_jax.cli.serve`).

Each input line is a JSON object `{"id", "task", "input"}` plus optional decoding options
(`max_new_tokens`, `beam_size`, `min_new_tokens`, `length_penalty`, `ban_newline`;
the server's defaults give the rest). `task` names a loaded prefix; `null` or `"base"` decodes
with the base model alone. The prompt is `input` followed by the separator the prefix was
trained with (recorded in its export, else "\nTarget:\n"), as in training.

Every request goes to one `prefix_jax.serve.engine.Engine` (`batch_size` slots): requests
of any task and position convention share its generate steps, a finished one's slot takes
the next at once, and beam-search requests run whole between steps. The engine is sized
for the requests of a call (slot length, prompt buckets, beam sizes) and kept for the next
calls while they fit. Output records follow the input order: `{"id", "task", "output"}`,
or `{"id", "task", "error"}` for a bad request (unknown task, empty or too long input, bad
option), or `{"line", "error"}` for a line that is not a JSON object with an id; every
other request is still answered.

Python API (load once, generate many):

    server = Server.load("smollm2", {"e2e": "runs/e2e/export", "webnlg": "..."})
    records = server.generate([{"id": 1, "task": "e2e", "input": "name[Aromi] ..."}])
    text = server.complete("webnlg", "Alan_Bean | birthPlace | Wheeler,_Texas")
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from prefix_jax.data import DEFAULT_SEPARATOR
from prefix_jax.data.tokens import until_eos
from prefix_jax.infer.decode import newline_token_ids
from prefix_jax.models.transformer import Transformer
from prefix_jax.serve.engine import Engine, EngineError, SamplingParams
from prefix_jax.serve.prefix_bank import BASE_TASK, PrefixRegistry, UnknownTaskError
from prefix_jax.serve.requests import (
    DecodeOptions,
    PreparedRequest,
    Request,
    RequestError,
    RequestReader,
)

log = logging.getLogger(__name__)


class Server:
    """A base model, a tokenizer and a PrefixRegistry, served through an Engine."""

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
        engine: Engine | None = None,
    ):
        """`engine`: an engine of this model to reuse (its prefixes are replaced by the
        registry's); one is built when it is missing or too small for a call's requests."""
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
        self.engine = engine
        self._loaded: dict = {}  # the PrefixInfo objects this server loaded into the engine
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
        engine = self._engine_for(prepared)
        pending, handles = list(prepared), []
        start, steps, busiest = time.perf_counter(), engine.stats().steps, 0
        bar = tqdm(total=len(prepared), desc="serve", unit="req", disable=not progress)
        while True:
            while pending and engine.stats().waiting < engine.max_waiting:
                p = pending.pop(0)
                try:
                    handles.append((p, engine.submit(p.prompt, _sampling(p.options), _task(p))))
                except (EngineError, ValueError) as e:
                    records[p.position] = _error_record(p.request, str(e))
            if not engine.step() and not pending:
                break
            busiest = max(busiest, engine.stats().slots_in_use)
            bar.n = sum(h.done.is_set() for _, h in handles)
            bar.refresh()
        bar.close()
        decode_s, generated = time.perf_counter() - start, 0
        for p, handle in handles:
            ids, _, reason = handle.result(timeout=0)
            if reason == "error":
                records[p.position] = _error_record(p.request, "decoding failed")
                continue
            ids, n = until_eos(ids, self.eos_id)
            generated += n
            record = {
                "id": p.request.id,
                "task": p.request.task,
                "output": self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
            }
            if return_tokens:
                record["tokens"] = ids
            records[p.position] = record
        self.last_stats = {
            "requests": len(requests),
            "errors": sum("error" in r for r in records if r is not None),
            "steps": engine.stats().steps - steps,
            "most_running": busiest,
            "generated_tokens": generated,
            "decode_s": decode_s,
            "tokens_per_s": generated / max(decode_s, 1e-9),
        }
        return records  # type: ignore[return-value]

    def _engine_for(self, prepared: list[PreparedRequest]) -> Engine:
        """The engine, holding this registry's prefixes; built (compiled) when there is
        none or these requests do not fit it: one prompt bucket (a power of two), slots of
        prefix + prompt + max_new_tokens."""
        prompt = _power_of_two(max([16, *(len(p.prompt) for p in prepared)]))
        new_tokens = max([1, *(p.options.max_new_tokens for p in prepared)])
        beams = {p.options.beam_size for p in prepared} - {1}
        ban = any(p.options.ban_newline for p in prepared)
        p = max(self.registry.max_length, 1)
        e = self.engine
        if e is not None:
            g = e.programs
            fits = g.buckets[-1] >= prompt and g.max_len >= p + prompt + new_tokens
            fits &= beams <= g.beam_sizes and (g.banned.any() or not ban)
            fits &= len(g.table.lengths) >= len(self.registry) and g.prefix_max_length >= p
            if fits:
                self._load_prefixes(e)
                return e
            beams, ban = beams | g.beam_sizes, ban or bool(g.banned.any())
        self.engine = Engine(
            self.model,
            self.tokenizer,
            slots=self.batch_size,
            max_len=p + prompt + new_tokens + 1,
            prefix_capacity=max(len(self.registry), 1),
            prefix_max_length=p,
            max_waiting=4 * self.batch_size,
            buckets=(prompt,),
            beam_sizes=tuple(sorted(beams)),
            banned_ids=newline_token_ids(self.tokenizer) if ban else (),
        )
        self._load_prefixes(self.engine)
        return self.engine

    def _load_prefixes(self, engine: Engine) -> None:
        """Make the engine's prefixes exactly the registry's (unless they already are)."""
        loaded = engine.prefixes()
        if set(loaded) == set(self.registry.tasks) and all(
            loaded[name] is info for name, info in self._loaded.items()
        ):
            return
        for name in engine.prefixes():
            engine.unload_prefix(name)
        self._loaded = {
            name: engine.load_prefix(name, exported)
            for name, exported in self.registry.exported.items()
        }

    def complete(self, task: str | None, text: str, **options) -> str:
        """The output for one input; raises RequestError (with the error record's message)."""
        request = Request(id=0, task=task, input=text, options=options)
        (record,) = self.generate([request])
        if "error" in record:
            raise RequestError(record["error"])
        return record["output"]

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


def _sampling(options: DecodeOptions) -> SamplingParams:
    return SamplingParams(
        max_tokens=options.max_new_tokens,
        min_tokens=options.min_new_tokens,
        ban_tokens=options.ban_newline,
        beam_size=options.beam_size,
        length_penalty=options.length_penalty,
    )


def _task(p: PreparedRequest) -> str | None:
    return None if p.request.task in (None, BASE_TASK) else p.request.task


def _power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _error_record(item: Any, message: str) -> dict:
    if isinstance(item, Request):
        return {"id": item.id, "task": item.task, "error": message}
    if isinstance(item, Mapping):
        return {"id": item.get("id"), "task": item.get("task"), "error": message}
    return {"id": None, "task": None, "error": message}
