"""Soak the HTTP server: many mixed requests, clients that disconnect mid-stream, bad
requests; the server must answer every good one, free every slot and keep its memory flat.

    python -m experiments.bench.serving_soak [--requests 2000] [--clients 8]

The server is the real `prefix-jax serve` process on 127.0.0.1 with the three prefixes of
`experiments.bench.serving` (E2E, WebNLG, DART) and the base model. `--clients` threads send
the requests in a fixed random order: completions and chats, streamed or not, greedy or
sampled (seeded), to a prefix or the base model, 1..`--max-tokens` new tokens; a share
(`--disconnect`) are streams the client closes after the first chunk, a share (`--bad`) are
bad requests (malformed JSON, unknown model, too long, out-of-range or wrongly typed
parameter) that must get their 4xx. Checked at the end, each an assertion:

- every good request is answered (200, a finish reason, `[DONE]` when streamed);
- every bad request got its status, and every cut stream was cut by us after a first chunk;
- no slot leaks: /metrics shows 0 slots in use, 0 running and 0 waiting;
- the server's RSS (VmRSS in /proc/<pid>/status, read after every request) stays within
  `--rss-tolerance` of its value at request `--rss-from` from then on;
- no compilation after warm-up.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from experiments.bench.serve_mixed import LENGTHS
from experiments.bench.serving import (
    REPO,
    export_prefixes,
    longest_prompt,
    metric,
    server_flags,
    start_server,
    stop_server,
    workload,
)

BASE = "smollm2"
# bad request kind -> (status it must get, how to make its body from a good one)
BAD = {
    "malformed JSON": (400, lambda body: json.dumps(body)[:-3]),
    "unknown model": (404, lambda body: json.dumps({**body, "model": "no-such-prefix"})),
    "too long": (400, lambda body: json.dumps({**body, "max_tokens": 100_000})),
    "temperature out of range": (400, lambda body: json.dumps({**body, "temperature": 5})),
    "max_tokens a string": (400, lambda body: json.dumps({**body, "max_tokens": "8"})),
}


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def plan(n: int, requests: list[tuple[str, str]], args, seed: int = 0) -> list[dict]:
    """The n requests: kind ("good", "cut" or a BAD key), endpoint, body."""
    rng = random.Random(seed)
    models = [*LENGTHS, BASE]
    out = []
    for i in range(n):
        task, source = requests[i % len(requests)]
        model = rng.choice(models)
        chat = model == BASE and rng.random() < 0.5
        body: dict = {"model": model, "max_tokens": rng.randint(1, args.max_tokens)}
        if rng.random() < 0.3:
            body |= {"temperature": 0.8, "top_p": 0.9, "seed": rng.randrange(2**31)}
        else:
            body["temperature"] = 0
        if chat:
            body["messages"] = [{"role": "user", "content": source}]
        else:
            body["prompt"] = source
        draw = rng.random()
        if draw < args.bad:
            kind = rng.choice(sorted(BAD))
        elif draw < args.bad + args.disconnect:
            kind = "cut"  # long enough to be cut mid-stream
            body |= {"stream": True, "max_tokens": 4 * args.max_tokens, "ignore_eos": True}
        else:
            kind = "good"
            body["stream"] = rng.random() < 0.5
        path = "/v1/chat/completions" if chat else "/v1/completions"
        out.append({"i": i, "kind": kind, "path": path, "body": body})
    return out


def send(client, url: str, item: dict) -> dict:
    """Send one planned request; what happened to it."""
    kind, body = item["kind"], item["body"]
    content = BAD[kind][1](body) if kind in BAD else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    if not body.get("stream") or kind in BAD:
        response = client.post(url + item["path"], content=content, headers=headers)
        ok = response.status_code == 200 and response.json()["choices"][0]["finish_reason"]
        return {"kind": kind, "status": response.status_code, "answered": bool(ok)}
    finish, done, chunks = None, False, 0
    with client.stream("POST", url + item["path"], content=content, headers=headers) as r:
        if r.status_code != 200:
            r.read()
            return {"kind": kind, "status": r.status_code, "answered": False}
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunks += 1
            if kind == "cut":
                break  # leaving the block closes the connection mid-stream
            choices = json.loads(data).get("choices") or [{}]
            finish = choices[0].get("finish_reason") or finish
    answered = done and finish in ("stop", "length")
    return {"kind": kind, "status": 200, "answered": answered, "chunks": chunks}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--max-tokens", type=int, default=8, help="good requests: 1..this")
    parser.add_argument("--disconnect", type=float, default=0.10, help="share of cut streams")
    parser.add_argument("--bad", type=float, default=0.05, help="share of bad requests")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--rss-from", type=int, default=200, help="RSS reference request")
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--out", type=Path, default=REPO / "experiments/results/serving")
    args = parser.parse_args(argv)
    if not 0 <= args.disconnect + args.bad <= 1 or min(args.disconnect, args.bad) < 0:
        parser.error("--disconnect and --bad are shares in [0, 1] summing to at most 1")
    if args.requests <= args.rss_from:
        parser.error(f"--requests must exceed --rss-from ({args.rss_from})")
    if args.clients < 1 or args.max_tokens < 1:
        parser.error("--clients and --max-tokens must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    import httpx

    from prefix_jax.models import load

    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load("smollm2")
    requests = workload(8)
    items = plan(args.requests, requests, args)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = export_prefixes(model, Path(tmp))
        del model
        chats = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            for _, text in requests
        ]
        texts = [text for _, text in requests] + chats  # chat prompts: base model, no separator
        longest = longest_prompt(tokenizer, texts)
        flags = server_flags(longest, 4 * args.max_tokens, args.slots, args.clients)
        cmd = [sys.executable, "-m", "prefix_jax.cli", "serve", "--model", BASE, "--port", "0",
               *flags, *(f"--prefix={t}={d}" for t, d in dirs["ours"].items())]  # fmt: skip
        print(f"server flags: {' '.join(flags)}", flush=True)
        proc, url = start_server(cmd, Path(tmp) / "soak_server.log")
        try:
            results, rss, wall = run(proc.pid, url, items, args, httpx)
            time.sleep(1.0)  # a cut request is freed at the engine's next step
            gauges = {
                name: metric(url, f"prefix_jax_{name}")
                for name in ("slots_in_use", "requests_running", "requests_waiting")
            }
            compiles = metric(url, "prefix_jax_compilations_after_warmup")
            health = httpx.get(f"{url}/health", timeout=30).json()
            cancelled = cancelled_count(httpx.get(f"{url}/metrics", timeout=30).text)
        finally:
            stop_server(proc)
    report(results, rss, wall, gauges, compiles, health, cancelled, load_start, args)


def run(pid: int, url: str, items: list[dict], args, httpx):
    """Send every item from `--clients` threads; results in plan order, and the server's
    RSS after each completed request (in completion order)."""
    rss: list[int] = []
    lock = threading.Lock()
    with httpx.Client(timeout=300) as client:

        def one(item: dict) -> dict:
            result = send(client, url, item)
            with lock:
                rss.append(rss_kib(pid))
                if len(rss) % 100 == 0:
                    print(f"  {len(rss)} requests, RSS {rss[-1] / 1024:.0f} MiB", flush=True)
            return result

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, items))
    return results, rss, time.perf_counter() - start


def cancelled_count(text: str) -> float:
    """Requests the server recorded as cancelled (its requests_total counter)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("prefix_jax_requests_total{") and 'finish_reason="cancelled"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def report(results, rss, wall, gauges, compiles, health, cancelled, load_start, args) -> None:
    good = [r for r in results if r["kind"] == "good"]
    cut = [r for r in results if r["kind"] == "cut"]
    bad = [r for r in results if r["kind"] in BAD]
    answered = sum(r["answered"] for r in good)
    cut_ok = sum(r["status"] == 200 and r["chunks"] >= 1 and not r["answered"] for r in cut)
    bad_ok = sum(r["status"] == BAD[r["kind"]][0] for r in bad)
    reference = rss[args.rss_from - 1]
    later = rss[args.rss_from - 1 :]
    drift = max(abs(x - reference) for x in later) / reference
    figures = {
        "requests": len(results),
        "wall_s": round(wall, 1),
        "good": len(good),
        "good_answered": answered,
        "cut": len(cut),
        "cut_mid_stream": cut_ok,
        "server_cancelled": cancelled,
        "bad": len(bad),
        "bad_with_their_status": bad_ok,
        **gauges,
        "compilations_after_warmup": compiles,
        "health": health.get("status"),
        "rss_mib_first": round(rss[0] / 1024, 1),
        f"rss_mib_at_{args.rss_from}": round(reference / 1024, 1),
        "rss_mib_min_after": round(min(later) / 1024, 1),
        "rss_mib_max_after": round(max(later) / 1024, 1),
        "rss_mib_final": round(rss[-1] / 1024, 1),
        "rss_drift": round(drift, 4),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }
    for name, value in figures.items():
        print(f"{name}: {value}")
    with (args.out / "soak.jsonl").open("a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}) + "\n")
    assert answered == len(good), f"{len(good) - answered} good requests were not answered"
    assert cut_ok == len(cut), f"{len(cut) - cut_ok} cut streams were not cut mid-stream"
    assert bad_ok == len(bad), f"{len(bad) - bad_ok} bad requests got another status"
    assert all(v == 0 for v in gauges.values()), f"slots or requests left over: {gauges}"
    assert compiles == 0, f"{compiles} compilations after warm-up"
    assert drift <= args.rss_tolerance, f"RSS drifted {drift:.1%} from request {args.rss_from}"
    print("soak passed")


if __name__ == "__main__":
    main()
