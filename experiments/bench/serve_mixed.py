"""SmolLM2 serving: a mixed batch of 3 tasks vs the same requests task by task, and the
memory of N = 1, 10, 100 loaded prefixes.

    python -m experiments.bench.serve_mixed [--per-task 8] [--max-new-tokens 32]

Three prefixes of lengths 5, 10 and 20 (the keys/values of random tokens, a realistic
scale; no training needed for a throughput measurement) serve E2E, WebNLG and DART
sources from ../shared/data (synthetic sources when it is absent). Throughput is
generated tokens (up to and including eos) per second of `Server.generate` wall time,
median over repeats after a warm-up call that compiles. "task by task" is what a
per-adapter server must do (PEFT cannot batch different prefixes together): one batch
per task. Memory: bytes of the loaded prefix tables (float32, host), and the resident-set
growth of the process while loading N exported prefixes from disk.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("PREFIX_JAX_DATA", Path(__file__).parents[2] / "../shared/data"))
TASKS = {"e2e": ("e2e", "e2e/devset.csv"), "webnlg": ("webnlg", "webnlg2017/dev.json")}
TASKS["dart"] = ("dart", "dart/dart-v1.1.1-full-dev.json")
LENGTHS = {"e2e": 5, "webnlg": 10, "dart": 20}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sources(per_task: int, seed: int = 0) -> dict[str, list[str]]:
    """`per_task` distinct real sources of each task (synthetic ones if the data is absent)."""
    from prefix_jax.data import load_task

    rng = np.random.default_rng(seed)
    out = {}
    for task, (loader, relative) in TASKS.items():
        path = DATA / relative
        if path.exists():
            split = "train" if task == "e2e" else "validation"
            examples = load_task(loader, path, split=split).examples
            distinct = list(dict.fromkeys(e.source for e in examples))
            picked = rng.choice(len(distinct), per_task, replace=False)
            out[task] = [distinct[i] for i in picked]
        else:
            lengths = rng.integers(5, 40, per_task)
            out[task] = [f"{task} request {i}: " + "word " * n for i, n in enumerate(lengths)]
    return out


def exported_prefix(model, table: np.ndarray):
    from prefix_jax.methods.prefix.artifact import ExportedPrefix
    from prefix_jax.models import model_identity

    c = model.config
    return ExportedPrefix(
        table=np.asarray(table, np.float32),
        num_layers=c.num_layers,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        positions_after_prefix=False,
        model=model_identity(model),
    )


def activation_prefix(model, length: int, seed: int):
    """An exported prefix holding the keys/values of `length` random tokens."""
    import jax

    from prefix_jax.methods.prefix.core import activations_table

    tokens = jax.random.randint(jax.random.key(seed), (length,), 0, model.config.vocab_size)
    return exported_prefix(model, activations_table(model, tokens, length))


def timed(server, requests: list[dict], repeats: int) -> tuple[float, int, list[dict]]:
    server.generate(requests)  # compiles
    times, tokens = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        records = server.generate(requests)
        times.append(time.perf_counter() - start)
        tokens = server.last_stats["generated_tokens"]
    return statistics.median(times), tokens, records


def throughput(model, tokenizer, args) -> tuple[list[tuple], bool]:
    from prefix_jax.serve.batch import Server
    from prefix_jax.serve.prefix_bank import PrefixRegistry
    from prefix_jax.serve.requests import DecodeOptions

    prefixes = {t: activation_prefix(model, n, seed) for seed, (t, n) in enumerate(LENGTHS.items())}
    registry = PrefixRegistry(model, prefixes)
    by_task = sources(args.per_task)
    requests = [  # tasks interleaved, as a router would send them
        {"id": f"{task}-{i}", "task": task, "input": texts[i]}
        for i in range(args.per_task)
        for task, texts in by_task.items()
    ]
    defaults = DecodeOptions(max_new_tokens=args.max_new_tokens, beam_size=args.beam_size)

    def server(batch_size: int) -> Server:
        return Server(model, tokenizer, registry, defaults=defaults, batch_size=batch_size)

    rows, outputs = [], {}
    n = len(requests)
    mixed = server(n)
    seconds, tokens, records = timed(mixed, requests, args.repeats)
    outputs["mixed"] = {r["id"]: r["output"] for r in records}
    rows.append((f"mixed, 1 batch of {n}", mixed.last_stats["steps"], tokens, seconds))

    per_task = server(args.per_task)
    seconds, tokens, batches = 0.0, 0, 0
    outputs["task"] = {}
    for task in by_task:
        subset = [r for r in requests if r["task"] == task]
        s, t, records = timed(per_task, subset, args.repeats)
        seconds, tokens = seconds + s, tokens + t
        batches += per_task.last_stats["steps"]
        outputs["task"] |= {r["id"]: r["output"] for r in records}
    rows.append((f"task by task, 3 batches of {args.per_task}", batches, tokens, seconds))

    same_size = server(args.per_task)
    seconds, tokens, _ = timed(same_size, requests, args.repeats)
    rows.append(
        (f"mixed, batches of {args.per_task}", same_size.last_stats["steps"], tokens, seconds)
    )
    identical = outputs["mixed"] == outputs["task"]
    return rows, identical


def memory(model, counts=(1, 10, 100)) -> list[tuple]:
    from prefix_jax.methods.prefix import artifact as export
    from prefix_jax.serve.prefix_bank import PrefixRegistry

    c = model.config
    width = 2 * c.num_layers * c.kv_dim
    cycle = list(LENGTHS.values())
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for i in range(max(counts)):
            table = rng.normal(size=(cycle[i % len(cycle)], width))
            dirs[f"task{i}"] = export.save(exported_prefix(model, table), Path(tmp) / f"task{i}")
        for n in counts:
            gc.collect()
            before = rss_bytes()
            start = time.perf_counter()
            registry = PrefixRegistry.from_dirs(model, dict(list(dirs.items())[:n]))
            load_s = time.perf_counter() - start
            gc.collect()
            grown = rss_bytes() - before
            padded = n * registry.max_length * width * 4  # float32
            rows.append((n, registry.nbytes, padded, grown, load_s))
            del registry
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-task", type=int, default=8, help="requests per task")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    import jax
    from flax import nnx

    from prefix_jax.models import load

    start = time.perf_counter()
    model, tokenizer = load("smollm2")
    print(f"loaded smollm2 in {time.perf_counter() - start:.1f}s on {jax.devices()[0]}")

    print(f"Memory of N loaded prefixes (lengths cycling {list(LENGTHS.values())}, float32)")
    print("| N | packed table MiB | padded [N, p_max] stack MiB | RSS growth MiB | load s |")
    print("|---|---|---|---|---|")
    for n, packed, padded, grown, load_s in memory(model):
        mib = 2**20
        print(
            f"| {n} | {packed / mib:.2f} | {padded / mib:.2f} | {grown / mib:.1f} | {load_s:.2f} |"
        )
    print()
    rows, identical = throughput(model, tokenizer, args)
    decoding = "greedy" if args.beam_size == 1 else f"beam {args.beam_size}"
    print(
        f"Throughput: 3 tasks (prefix lengths {', '.join(map(str, LENGTHS.values()))}), "
        f"{args.per_task} requests each, {decoding}, max_new_tokens {args.max_new_tokens}"
    )
    print("| schedule | engine steps | generated tokens | seconds | tokens/s |")
    print("|---|---|---|---|---|")
    for label, batches, tokens, seconds in rows:
        print(f"| {label} | {batches} | {tokens} | {seconds:.2f} | {tokens / seconds:.1f} |")
    print(f"mixed-batch outputs identical to task-by-task outputs: {identical}")

    params = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    print(f"(base model parameters: {params / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
