"""What a prefix costs at inference: forward and decode time vs prefix length p.

    python -m experiments.bench.prefix_overhead [--repeats 5] [--batch 4] [--dtype float32]

SmolLM2, batch `--batch`, sequences of 64 and 512 tokens, p in {0, 1, 10, 100, 200}
(p = 0: no prefix at all). Forward: one jitted call on the whole sequence. Decode: greedy,
prefill of the sequence plus 16 new tokens. Each time is the median of `--repeats` calls
after a compiling call, the settings taking turns; the overhead is relative to p = 0 at
the same length.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import numpy as np

from experiments.bench.timing import call_seconds

LENGTHS = (64, 512)
PREFIX_LENGTHS = (0, 1, 10, 100, 200)
NEW_TOKENS = 16


def random_prefix(model, p: int):
    """A p-vector prefix of the model's shape (values do not change the cost)."""
    import jax
    import jax.numpy as jnp

    from prefix_jax.models.kv import PrefixKV

    if p == 0:
        return None
    c = model.config
    shape = (c.num_layers, 1, p, c.num_kv_heads, c.head_dim)
    keys = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    return PrefixKV(keys=keys, values=keys * 0.5)


def setting_calls(model, batch: int, length: int, p: int):
    """(forward call, decode call) for one setting, each compiled by a first call."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from prefix_jax.infer.decode import greedy

    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 49152, (batch, length)), jnp.int32)
    mask = jnp.ones((batch, length), bool)
    prefix = random_prefix(model, p)
    forward = nnx.jit(lambda m, t, a, pre: m(t, a, prefix=pre)[0])

    def run_forward():
        return jax.block_until_ready(forward(model, tokens, mask, prefix))

    def run_decode():
        return jax.block_until_ready(
            greedy(model, tokens, mask, max_new_tokens=NEW_TOKENS, prefix=prefix)
        )

    run_forward(), run_decode()
    return run_forward, run_decode


def timings(
    model, batch: int, length: int, prefix_lengths: Sequence[int], repeats: int
) -> dict[int, tuple[float, float]]:
    """{p: (forward s, decode s)}: medians over rounds that each time every p once, so a
    slow spell of a shared machine hits all settings alike."""
    calls = {p: setting_calls(model, batch, length, p) for p in prefix_lengths}
    times = {p: ([], []) for p in prefix_lengths}
    for _ in range(repeats):
        for p, (run_forward, run_decode) in calls.items():
            times[p][0].extend(call_seconds(run_forward, 1))
            times[p][1].extend(call_seconds(run_decode, 1))
    return {p: (statistics.median(f), statistics.median(d)) for p, (f, d) in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    import jax.numpy as jnp

    from prefix_jax.models import load

    dtype = jnp.dtype(args.dtype)
    model, _ = load("smollm2", with_tokenizer=False, param_dtype=dtype, dtype=dtype)
    print(
        f"SmolLM2-135M prefix overhead, batch {args.batch}, {args.dtype}, "
        f"decode = prefill + {NEW_TOKENS} greedy tokens, median of {args.repeats}"
    )
    print("| seq | p | forward ms | overhead | decode ms | overhead |")
    print("|---:|---:|---:|---:|---:|---:|")
    for length in LENGTHS:
        results = timings(model, args.batch, length, PREFIX_LENGTHS, args.repeats)
        base = results[0]
        for p, (fwd, dec) in results.items():
            print(
                f"| {length} | {p} | {fwd * 1e3:.0f} | {fwd / base[0] - 1:+.1%} | "
                f"{dec * 1e3:.0f} | {dec / base[1] - 1:+.1%} |"
            )


if __name__ == "__main__":
    main()
