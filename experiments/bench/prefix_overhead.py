"""What a prefix costs at inference: forward and decode time vs prefix length p.

    python -m experiments.bench.prefix_overhead [--repeats 3] [--batch 4] [--dtype float32]

SmolLM2, batch `--batch`, sequences of 64 and 512 tokens, p in {0, 1, 10, 100, 200}
(p = 0: no prefix at all). Forward: one jitted call on the whole sequence. Decode: greedy,
prefill of the sequence plus 16 new tokens. Each time is the median of `--repeats` calls
after a compiling call; the overhead is relative to p = 0 at the same length.
"""

from __future__ import annotations

import argparse

import numpy as np

from experiments.bench.timing import median_seconds

LENGTHS = (64, 512)
PREFIX_LENGTHS = (0, 1, 10, 100, 200)
NEW_TOKENS = 16


def random_prefix(model, p: int):
    """A p-vector prefix of the model's shape (values do not change the cost)."""
    import jax
    import jax.numpy as jnp

    from prefix_jax.models.transformer import PrefixKV

    if p == 0:
        return None
    c = model.config
    shape = (c.num_layers, 1, p, c.num_kv_heads, c.head_dim)
    keys = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    return PrefixKV(keys=keys, values=keys * 0.5)


def timings(model, batch: int, length: int, p: int, repeats: int) -> tuple[float, float]:
    """(forward seconds, decode seconds) for one setting."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from prefix_jax.decode import greedy

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
    return median_seconds(run_forward, repeats), median_seconds(run_decode, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
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
        base = None
        for p in PREFIX_LENGTHS:
            fwd, dec = timings(model, args.batch, length, p, args.repeats)
            base = base or (fwd, dec)
            print(
                f"| {length} | {p} | {fwd * 1e3:.0f} | {fwd / base[0] - 1:+.1%} | "
                f"{dec * 1e3:.0f} | {dec / base[1] - 1:+.1%} |"
            )


if __name__ == "__main__":
    main()
