"""SmolLM2: load time, forward time (batch 8 x 64) and peak RSS, ours vs transformers.

    python -m experiments.bench.load_forward [--repeats 5]

Each side runs in its own fresh process so that peak resident memory is its own.
Forward times are medians over repeats after one warm-up call (which, for us, compiles).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from experiments.bench.timing import median_seconds

BATCH, LENGTH = 8, 64


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from prefix_jax.models import load

    start = time.perf_counter()
    model, _ = load("smollm2")
    load_s = time.perf_counter() - start
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 49152, (BATCH, LENGTH)))
    forward = nnx.jit(lambda m, t: m(t)[0])
    start = time.perf_counter()
    jax.block_until_ready(forward(model, tokens))
    compile_s = time.perf_counter() - start
    forward_s = median_seconds(lambda: jax.block_until_ready(forward(model, tokens)), repeats)
    return {
        "load_s": load_s,
        "first_call_s": compile_s,
        "forward_s": forward_s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_transformers(repeats: int) -> dict:
    import torch
    import transformers

    from prefix_jax.models import resolve

    path = resolve("smollm2")
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    load_s = time.perf_counter() - start
    tokens = torch.randint(0, 49152, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        start = time.perf_counter()
        model(tokens)
        first = time.perf_counter() - start
        forward_s = median_seconds(lambda: model(tokens), repeats)
    return {
        "load_s": load_s,
        "first_call_s": first,
        "forward_s": forward_s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        fn = run_ours if args.side == "ours" else run_transformers
        print(json.dumps(fn(args.repeats)))
        return
    rows = {}
    for side in ("ours", "transformers"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.bench.load_forward",
                "--side",
                side,
                "--repeats",
                str(args.repeats),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows[side] = json.loads(out.strip().splitlines()[-1])
    print(f"SmolLM2-135M, forward batch {BATCH} x {LENGTH}, float32, median of {args.repeats}")
    print(
        f"| {'':14} | {'load s':>7} | {'1st call s':>10} | {'forward s':>9} | {'peak RSS MB':>11} |"
    )
    print(f"|{'-' * 16}|{'-' * 9}|{'-' * 12}|{'-' * 11}|{'-' * 13}|")
    for side, r in rows.items():
        print(
            f"| {side:14} | {r['load_s']:7.2f} | {r['first_call_s']:10.2f} | "
            f"{r['forward_s']:9.3f} | {r['peak_rss_mb']:11.0f} |"
        )
    ratio = rows["transformers"]["forward_s"] / rows["ours"]["forward_s"]
    print(f"forward speed ratio (transformers / ours): {ratio:.2f}x")


if __name__ == "__main__":
    main()
