"""Online serving on SmolLM2, side by side in one run: our `prefix-jax serve` over HTTP,
(a) the batch path offline (the throughput ceiling), (b) PEFT + transformers behind the
same HTTP front end.

    python -m experiments.bench.serving [--per-task 8] [--max-tokens 32] [--rates 0.5 1 2 4 8]

Workload: three prefixes (E2E p=5, WebNLG p=10, DART p=20: the keys/values of random tokens,
built as `serve_mixed` builds them, numbered PEFT's way, positions after the prefix) exported
to a temporary directory in our format and PEFT's; `--per-task` real sources of each task
(`serve_mixed.sources`), interleaved. Every request is greedy with `--max-tokens` new
tokens (eos may end it earlier; every system produces the same tokens, checked).

Each HTTP system is a separate server process on 127.0.0.1, driven by one client thread per
request over httpx with streamed responses (first token = first streamed chunk): lone
requests one at a time (the reference latency), Poisson arrivals at each `--rates` (requests
per second, the same arrival draws for both systems), and a burst of all requests at once.

- ours: `python -m prefix_jax.cli serve` with `--slots` slots; its /metrics compile count is
  read after warm-up and at the end.
- (a): `prefix_jax.serve.batch.Server.generate` on all requests in this process.
- (b): this script with `--peft-server`: FastAPI/uvicorn (the library's `run_server`),
  `torch.set_num_threads(--threads)`, one worker thread that takes the waiting requests of
  one adapter (the oldest request's, `set_adapter`) as a batch of up to `--slots`, and
  decodes it greedily with PEFT's prefix (`PeftModel.get_prompt`) as `past_key_values` of
  transformers' cached forward (transformers 5's `generate` drops a PEFT prefix). New
  requests wait for the running batch to end. Before anything is timed it decodes every
  request through that same code and must produce our token ids.

Targets: goodput (highest rate whose p99 end-to-end latency is within 5x a lone request's)
ours >= 2x (b); burst output tokens/s >= 0.8x (a); median TTFT at the lightest rate <= 1.5x
a lone request's; no compilation after warm-up. Results: a table on stdout and JSON lines
in `--out`/serving.jsonl.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from starlette.requests import Request  # resolved at run time by FastAPI's (b) route

from experiments.bench.serve_mixed import LENGTHS, activation_prefix, sources

REPO = Path(__file__).resolve().parents[2]
GOODPUT_FACTOR = 5.0  # p99 end-to-end latency within this many lone requests'


# ------------------------------------------------------------------ workload


def workload(per_task: int) -> list[tuple[str, str]]:
    """(task, source) pairs, tasks interleaved as a router would see them."""
    by_task = sources(per_task)
    return [(task, texts[i]) for i in range(per_task) for task, texts in by_task.items()]


def export_prefixes(model, root: Path) -> dict[str, dict[str, Path]]:
    """Each task's random-token prefix saved in our format and PEFT's, as a user has them."""
    from prefix_jax.methods.prefix import artifact

    dirs: dict[str, dict[str, Path]] = {"ours": {}, "peft": {}}
    for seed, (task, length) in enumerate(LENGTHS.items()):
        exported = activation_prefix(model, length, seed)
        # PEFT numbers the tokens after its prefix; both sides use that convention
        exported = dataclasses.replace(exported, positions_after_prefix=True)
        dirs["ours"][task] = artifact.save(exported, root / "ours" / task)
        dirs["peft"][task] = artifact.save_peft(exported, root / "peft" / task)
    return dirs


def poisson_arrivals(n: int, rate: float, seed: int) -> np.ndarray:
    """Arrival times (s) of n requests at `rate` per second."""
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))


# ------------------------------------------------------------------ servers and client


def start_server(cmd: list[str], log: Path, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """Launch a server process that prints `serving URL/v1` once it listens."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    err = log.open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            print(f"  [{log.stem}] {line.rstrip()}", flush=True)
            if m := re.search(r"serving (http://\S+?)/v1", line):
                found.append(m.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        proc.kill()
        raise RuntimeError(f"{cmd[:4]} did not start:\n{log.read_text()[-3000:]}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain later output
    return proc, found[0]


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def metric(url: str, name: str) -> float:
    """One unlabelled value from a Prometheus /metrics page."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    if m is None:
        raise KeyError(f"{name} not in {url}/metrics")
    return float(m.group(1))


@dataclasses.dataclass
class Timing:
    """One streamed request, seconds from when it was sent."""

    start: float
    ttft: float
    e2e: float
    tokens: int
    text: str
    finish: str | None


def stream_completion(client, url: str, model: str, prompt: str, max_tokens: int) -> Timing:
    """A streamed greedy completion: time to the first chunk, to [DONE], and the usage."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, parts, tokens, finish = None, [], 0, None
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{model}: HTTP {response.status_code}: {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("choices"):
                first = first or time.perf_counter()
                parts.append(chunk["choices"][0]["text"])
                finish = chunk["choices"][0]["finish_reason"] or finish
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return Timing(start, (first or end) - start, end - start, tokens, "".join(parts), finish)


def run_arrivals(url: str, requests: list[tuple[str, str]], arrivals, max_tokens: int):
    """Send request i at arrivals[i] seconds (one thread each); their timings and wall time."""
    import httpx

    limits = httpx.Limits(max_connections=len(requests) + 4)
    with httpx.Client(timeout=600, limits=limits) as client:
        t0 = time.perf_counter() + 0.05

        def one(i: int) -> Timing:
            time.sleep(max(0.0, t0 + arrivals[i] - time.perf_counter()))
            task, text = requests[i]
            return stream_completion(client, url, task, text, max_tokens)

        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            timings = list(pool.map(one, range(len(requests))))
    wall = max(t.start + t.e2e for t in timings) - min(t.start for t in timings)
    return timings, wall


def summary(system: str, scenario: str, rate: float | None, timings, wall: float) -> dict:
    """Percentiles of one scenario's timings (TPOT over requests of more than one token)."""
    ttft = [t.ttft for t in timings]
    e2e = [t.e2e for t in timings]
    tpot = [(t.e2e - t.ttft) / (t.tokens - 1) for t in timings if t.tokens > 1]
    tokens = sum(t.tokens for t in timings)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {
        "system": system,
        "scenario": scenario,
        "rate": rate,
        "requests": len(timings),
        "output_tokens": tokens,
        "wall_s": wall,
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "tpot_p50": pct(tpot, 50),
        "tpot_p99": pct(tpot, 99),
        "e2e_p50": pct(e2e, 50),
        "e2e_p99": pct(e2e, 99),
        "tokens_per_s": tokens / wall,
        "requests_per_s": len(timings) / wall,
        "load_average_1m": os.getloadavg()[0],  # other users of the machine, at the end
    }


def measure_http(system: str, url: str, requests, args) -> tuple[list[dict], dict[int, str]]:
    """Lone requests, then each Poisson rate, then the burst; rows and the burst's texts."""
    rows = []
    lone = []
    for i in range(args.lone):  # one at a time, covering the tasks in turn
        timings, _ = run_arrivals(url, [requests[i]], [0.0], args.max_tokens)
        lone += timings
    rows.append(summary(system, "lone", None, lone, sum(t.e2e for t in lone)))
    print(f"  {system} lone: e2e {rows[-1]['e2e_p50']:.2f}s", flush=True)
    for k, rate in enumerate(args.rates):
        arrivals = poisson_arrivals(len(requests), rate, seed=k)
        timings, wall = run_arrivals(url, requests, arrivals, args.max_tokens)
        rows.append(summary(system, "poisson", rate, timings, wall))
        print(f"  {system} rate {rate}: p99 e2e {rows[-1]['e2e_p99']:.2f}s", flush=True)
    timings, wall = run_arrivals(url, requests, [0.0] * len(requests), args.max_tokens)
    rows.append(summary(system, "burst", None, timings, wall))
    print(f"  {system} burst: {rows[-1]['tokens_per_s']:.1f} tokens/s", flush=True)
    return rows, {i: t.text for i, t in enumerate(timings)}


# ------------------------------------------------------------------ (b): PEFT + transformers


class PeftWorker:
    """Greedy decoding of one adapter's batch at a time on one thread (PEFT cannot mix
    adapters in a batch): the prefix from `get_prompt` is transformers' `past_key_values`."""

    def __init__(self, adapters: dict[str, str], slots: int):
        import peft
        import torch
        import transformers

        from prefix_jax.models import resolve

        path = resolve("smollm2")
        base = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            path.parent, gguf_file=path.name
        )
        names = list(adapters)
        model = peft.PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(adapters[name], adapter_name=name)
        self.model = model.eval()
        self.adapters = set(names)
        self.slots = slots
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        pending: list = []
        while True:
            if not pending:
                pending.append(self.jobs.get())
            while not self.jobs.empty():
                pending.append(self.jobs.get_nowait())
            adapter = pending[0][0]
            batch = [job for job in pending if job[0] == adapter][: self.slots]
            pending = [job for job in pending if all(job is not b for b in batch)]
            self.generate(adapter, batch)

    def generate(self, adapter: str, batch: list) -> None:
        """Jobs (adapter, prompt ids, max_tokens, emit): emit(token) for each new token;
        a row stops after eos or its max_tokens, the batch when every row has."""
        import torch

        from prefix_jax.data.tokens import left_pad

        eos = self.tokenizer.eos_token_id
        self.model.set_adapter(adapter)
        p = self.model.active_peft_config.num_virtual_tokens
        tokens, mask = left_pad([job[1] for job in batch], pad_id=eos)
        ids, mask = torch.as_tensor(np.asarray(tokens)), torch.as_tensor(np.asarray(mask))
        attention = torch.cat([torch.ones(len(batch), p, dtype=mask.dtype), mask], 1)
        positions = p + (mask.cumsum(-1) - 1).clamp(min=0)  # PEFT: tokens after the prefix
        cache = self.model.get_prompt(batch_size=len(batch))
        done = [False] * len(batch)
        counts = [0] * len(batch)
        with torch.inference_mode():
            while True:
                out = self.model.base_model(
                    input_ids=ids,
                    attention_mask=attention,
                    position_ids=positions,
                    cache=cache,  # transformers 5's name for past_key_values
                    use_cache=True,
                    logits_to_keep=1,
                )
                cache = out.cache
                ids = out.logits[:, -1].argmax(-1, keepdim=True)
                for row, job in enumerate(batch):
                    if done[row]:
                        continue
                    token = int(ids[row, 0])
                    counts[row] += 1
                    done[row] = token == eos or counts[row] >= job[2]
                    job[3](token, done[row])
                if all(done):
                    return
                attention = torch.cat([attention, torch.ones(len(batch), 1, dtype=mask.dtype)], 1)
                positions = positions[:, -1:] + 1

    def prompt_ids(self, text: str) -> list[int]:
        """The source, then the separator a prefix without a training config uses (ours too)."""
        from prefix_jax.data import DEFAULT_SEPARATOR
        from prefix_jax.data.tokens import plain_ids, separator_ids

        (ids,) = plain_ids(self.tokenizer, [text])
        return ids + separator_ids(self.tokenizer, DEFAULT_SEPARATOR)

    def check(self, expected: list[dict]) -> tuple[int, list[str]]:
        """Decode every request through `generate` (per adapter, batches of `slots`); how
        many equal our token ids, and a line for each that does not."""
        equal, diffs = 0, []
        for adapter in sorted({e["task"] for e in expected}):
            mine = [e for e in expected if e["task"] == adapter]
            for start in range(0, len(mine), self.slots):
                chunk = mine[start : start + self.slots]
                got: list[list[int]] = [[] for _ in chunk]
                jobs = [
                    (adapter, self.prompt_ids(e["input"]), e["max_tokens"], _collect(got[i]))
                    for i, e in enumerate(chunk)
                ]
                self.generate(adapter, jobs)
                for e, ids in zip(chunk, got, strict=True):
                    ids = ids[:-1] if ids and ids[-1] == self.tokenizer.eos_token_id else ids
                    if ids == e["tokens"]:
                        equal += 1
                    else:
                        at = next(
                            (
                                k
                                for k, (a, b) in enumerate(zip(ids, e["tokens"], strict=False))
                                if a != b
                            ),
                            min(len(ids), len(e["tokens"])),
                        )
                        diffs.append(f"{e['id']}: first differs at token {at}")
        return equal, diffs


def _collect(into: list[int]) -> Callable[[int, bool], None]:
    return lambda token, done: into.append(token)


def peft_app(worker: PeftWorker):
    """OpenAI-style streamed /v1/completions over the worker (the bench's requests only)."""
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from sse_starlette import EventSourceResponse

    from prefix_jax.serve.protocol import Reply, error_body

    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        if body.get("model") not in worker.adapters:
            message = f"model {body.get('model')!r} does not exist"
            return JSONResponse(error_body(message, "invalid_request_error", "model"), 404)
        if not body.get("stream"):
            return JSONResponse(error_body("only stream: true", "invalid_request_error"), 400)
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        ids = worker.prompt_ids(body["prompt"])

        def emit(token: int, done: bool) -> None:  # the worker's thread
            loop.call_soon_threadsafe(tokens.put_nowait, (token, done))

        worker.jobs.put((body["model"], ids, int(body.get("max_tokens", 16)), emit))
        reply = Reply(body["model"], chat=False)

        async def events():
            new: list[int] = []
            shown = ""
            while True:
                token, done = await tokens.get()
                new.append(token)
                text = worker.tokenizer.decode(new, skip_special_tokens=True)
                reason = None
                if done:
                    reason = "stop" if token == worker.tokenizer.eos_token_id else "length"
                yield json.dumps(reply.chunk(text[len(shown) :], reason, with_usage=True))
                shown = text
                if done:
                    break
            yield json.dumps(reply.usage_chunk(len(ids), len(new)))
            yield "[DONE]"

        return EventSourceResponse(events(), sep="\n")

    return app


def peft_server(args: argparse.Namespace) -> None:
    """The (b) server process: check against our tokens, then serve."""
    import torch

    from prefix_jax.serve.openai_api import run_server

    torch.set_num_threads(args.threads)
    worker = PeftWorker(dict(args.adapter), args.slots)
    expected = json.loads(Path(args.check).read_text())
    start = time.perf_counter()
    equal, diffs = worker.check(expected)
    print(
        f"peft check: {equal}/{len(expected)} requests equal our token ids "
        f"({time.perf_counter() - start:.0f}s){''.join(f'; {d}' for d in diffs)}",
        flush=True,
    )
    if diffs and not args.allow_mismatch:
        sys.exit(1)
    run_server(peft_app(worker), "127.0.0.1", 0, lambda url: print(f"serving {url}/v1", flush=True))


# ------------------------------------------------------------------ report


def goodput(rows: list[dict], system: str) -> float:
    """The highest rate whose p99 end-to-end latency is within GOODPUT_FACTOR x a lone
    request's median (0 when none is)."""
    lone = next(r for r in rows if r["system"] == system and r["scenario"] == "lone")
    bound = GOODPUT_FACTOR * lone["e2e_p50"]
    ok = [
        r["rate"]
        for r in rows
        if r["system"] == system and r["scenario"] == "poisson" and r["e2e_p99"] <= bound
    ]
    return max(ok, default=0.0)


def print_table(rows: list[dict]) -> None:
    print(
        "| system | scenario | req/s offered | TTFT p50 / p99 s | TPOT p50 / p99 ms "
        "| e2e p50 / p99 s | output tok/s | req/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = "all at once" if r["scenario"] == "burst" else r["rate"] or "one at a time"
        if r["system"] == "(a) batch":
            rate = "offline"
        tpot = f"{1e3 * r['tpot_p50']:.0f} / {1e3 * r['tpot_p99']:.0f}"
        print(
            f"| {r['system']} | {r['scenario']} | {rate} | {r['ttft_p50']:.2f} / "
            f"{r['ttft_p99']:.2f} | {tpot} | {r['e2e_p50']:.2f} / {r['e2e_p99']:.2f} "
            f"| {r['tokens_per_s']:.1f} | {r['requests_per_s']:.2f} |"
        )


def targets(rows: list[dict], compiles: tuple[float, float], args) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of the four targets."""
    out = []
    if any(r["system"] == "(b) peft" for r in rows):
        ours, peft = goodput(rows, "ours"), goodput(rows, "(b) peft")
        out.append(
            (
                f"goodput (p99 e2e <= {GOODPUT_FACTOR:g}x lone): ours >= 2x (b)",
                f"ours {ours:g} req/s, (b) {peft:g} req/s (rates tried {args.rates}; "
                "0 = over the bound at every one)",
                ours > 0 and ours >= 2 * peft,
            )
        )
    burst = next(r for r in rows if r["system"] == "ours" and r["scenario"] == "burst")
    ceiling = next(r for r in rows if r["system"] == "(a) batch")
    ratio = burst["tokens_per_s"] / ceiling["tokens_per_s"]
    out.append(
        (
            "burst output tokens/s >= 0.8x (a)",
            f"{burst['tokens_per_s']:.1f} vs {ceiling['tokens_per_s']:.1f} = {ratio:.2f}x",
            ratio >= 0.8,
        )
    )
    lone = next(r for r in rows if r["system"] == "ours" and r["scenario"] == "lone")
    light = next(r for r in rows if r["system"] == "ours" and r["rate"] == min(args.rates))
    ratio = light["ttft_p50"] / lone["ttft_p50"]
    out.append(
        (
            f"median TTFT at {min(args.rates):g} req/s <= 1.5x lone",
            f"{light['ttft_p50']:.3f} vs {lone['ttft_p50']:.3f} s = {ratio:.3f}x",
            ratio <= 1.5,
        )
    )
    before, after = compiles
    out.append(
        (
            "compilations after warm-up: 0",
            f"{before:g} after warm-up, {after:g} at the end",
            before == after == 0,
        )
    )
    return out


# ------------------------------------------------------------------ main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-task", type=int, default=8, help="requests per task (3 tasks)")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[0.5, 1.0, 2.0, 4.0, 8.0],
        help="Poisson arrival rates, requests per second",
    )
    parser.add_argument("--lone", type=int, default=6, help="lone requests for the reference")
    parser.add_argument("--slots", type=int, default=8, help="our slots = (a)'s and (b)'s batch")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for (b)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls of (a)")
    parser.add_argument("--out", type=Path, default=REPO / "experiments/results/serving")
    parser.add_argument("--skip-peft", action="store_true", help="ours and (a) only")
    parser.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="time (b) even if some of its tokens differ from ours",
    )
    hidden = parser.add_argument_group("internal: the (b) server process")
    hidden.add_argument("--peft-server", action="store_true", help=argparse.SUPPRESS)
    hidden.add_argument(
        "--adapter",
        action="append",
        default=[],
        help=argparse.SUPPRESS,
        type=lambda s: tuple(s.split("=", 1)),
    )
    hidden.add_argument("--check", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.per_task < 1 or args.max_tokens < 1 or args.slots < 1:
        parser.error("--per-task, --max-tokens and --slots must be positive")
    if any(r <= 0 for r in args.rates):
        parser.error(f"--rates must be positive, got {args.rates}")
    args.lone = min(args.lone, 3 * args.per_task)
    return args


def longest_prompt(tokenizer, texts: list[str]) -> int:
    """Tokens of the longest source followed by the separator (what a prefix model reads)."""
    from prefix_jax.data import DEFAULT_SEPARATOR
    from prefix_jax.data.tokens import plain_ids, separator_ids

    sep = len(separator_ids(tokenizer, DEFAULT_SEPARATOR))
    return max(len(ids) for ids in plain_ids(tokenizer, texts)) + sep


def server_flags(longest: int, max_tokens: int, slots: int, waiting: int) -> list[str]:
    """Server flags sized for a workload: prompt buckets are powers of two from 16 up to
    the longest prompt, and a slot holds the longest prefix, bucket and `max_tokens`."""
    buckets = [16]
    while buckets[-1] < longest:
        buckets.append(2 * buckets[-1])
    p = max(LENGTHS.values())
    max_len = p + buckets[-1] + max_tokens
    return [
        "--slots", str(slots), "--max-len", str(max_len),
        "--buckets", *map(str, buckets), "--prefix-capacity", str(len(LENGTHS)),
        "--prefix-max-length", str(p), "--max-waiting", str(max(64, waiting)),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.peft_server:
        return peft_server(args)

    from prefix_jax.models import load
    from prefix_jax.serve.batch import Server
    from prefix_jax.serve.prefix_bank import PrefixRegistry
    from prefix_jax.serve.requests import DecodeOptions

    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    model, tokenizer = load("smollm2")
    requests = workload(args.per_task)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = export_prefixes(model, Path(tmp))
        longest = longest_prompt(tokenizer, [text for _, text in requests])
        flags = server_flags(longest, args.max_tokens, args.slots, len(requests))
        print(
            f"{len(requests)} requests, {args.max_tokens} new tokens, server flags: "
            f"{' '.join(flags)}",
            flush=True,
        )

        # (a), untimed first: our token ids for the (b) check
        registry = PrefixRegistry.from_dirs(model, dirs["ours"])
        batch = Server(
            model,
            tokenizer,
            registry,
            batch_size=args.slots,
            defaults=DecodeOptions(max_new_tokens=args.max_tokens),
        )
        records = [{"id": i, "task": t, "input": s} for i, (t, s) in enumerate(requests)]
        reference = batch.generate(records, return_tokens=True)
        check = Path(tmp) / "check.json"
        check.write_text(
            json.dumps(
                [
                    {**r, "tokens": ref["tokens"], "max_tokens": args.max_tokens}
                    for r, ref in zip(records, reference, strict=True)
                ]
            )
        )

        peft = None
        if not args.skip_peft:  # checked before anything is timed
            cmd = [
                sys.executable,
                "-m",
                "experiments.bench.serving",
                "--peft-server",
                "--check",
                str(check),
                "--slots",
                str(args.slots),
                "--threads",
                str(args.threads),
                *(f"--adapter={t}={d}" for t, d in dirs["peft"].items()),
            ]
            if args.allow_mismatch:
                cmd.append("--allow-mismatch")
            peft = start_server(cmd, Path(tmp) / "peft_server.log", timeout=1800)

        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            batch.generate(records)
            times.append(time.perf_counter() - start)
        wall = float(np.median(times))
        tokens = batch.last_stats["generated_tokens"]
        nan = float("nan")  # offline: no first tokens
        rows.append(
            {
                "system": "(a) batch",
                "scenario": "burst",
                "rate": None,
                "requests": len(records),
                "output_tokens": tokens,
                "wall_s": wall,
                "ttft_p50": nan,
                "ttft_p99": nan,
                "tpot_p50": nan,
                "tpot_p99": nan,
                "e2e_p50": wall,
                "e2e_p99": wall,
                "tokens_per_s": tokens / wall,
                "requests_per_s": len(records) / wall,
                "load_average_1m": os.getloadavg()[0],
            }
        )
        print(f"  (a) batch: {tokens / wall:.1f} tokens/s", flush=True)
        del batch, registry, model

        cmd = [
            sys.executable,
            "-m",
            "prefix_jax.cli",
            "serve",
            "--model",
            "smollm2",
            "--port",
            "0",
            *flags,
            *(f"--prefix={t}={d}" for t, d in dirs["ours"].items()),
        ]
        ours, url = start_server(cmd, Path(tmp) / "ours_server.log")
        try:
            for task in LENGTHS:  # warm-up: one request per prefix
                run_arrivals(url, [(task, requests[0][1])], [0.0], args.max_tokens)
            before = metric(url, "prefix_jax_compilations_after_warmup")
            ours_rows, texts = measure_http("ours", url, requests, args)
            after = metric(url, "prefix_jax_compilations_after_warmup")
        finally:
            stop_server(ours)
        rows += ours_rows
        same = sum(texts[i].strip() == ref["output"] for i, ref in enumerate(reference))
        print(f"  ours over HTTP: {same}/{len(reference)} burst texts equal (a)'s", flush=True)

        if peft is not None:
            proc, url = peft
            try:
                for task in LENGTHS:  # warm-up: one request per adapter
                    run_arrivals(url, [(task, requests[0][1])], [0.0], args.max_tokens)
                peft_rows, peft_texts = measure_http("(b) peft", url, requests, args)
            finally:
                stop_server(proc)
            rows += peft_rows

    print()
    print_table(rows)
    print()
    met = targets(rows, (before, after), args)
    for target, measured, ok in met:
        print(f"- {target}: {measured}: {'met' if ok else 'NOT met'}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with (args.out / "serving.jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps({"time": stamp, "args": sys.argv[1:], **r}) + "\n")
        for target, measured, ok in met:
            f.write(
                json.dumps({"time": stamp, "target": target, "measured": measured, "met": ok})
                + "\n"
            )


if __name__ == "__main__":
    main()
