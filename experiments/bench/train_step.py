"""Prefix-tuning train step on SmolLM2: ours (jitted) vs PEFT + transformers, side by side.

    python -m experiments.bench.train_step [--repeats 5] [--threads N]

Batch 8 x 64 tokens, prefix p=10, AdamW, float32, the same number of CPU threads for both.
Reports median step time (after warm-up), the ratio, and our achieved FLOP/s as a fraction
of a 2048^2 float32 matmul timed in the same run: the distance to what this CPU can do.
FLOPs are counted analytically (XLA's cost analysis counts a scanned layer once): a
prefix step is the forward pass plus the backward pass to the activations only (no weight
gradients), i.e. about twice the forward matmul FLOPs.
"""

from __future__ import annotations

import argparse
import os

from experiments.bench.timing import median_seconds

BATCH, LENGTH, P = 8, 64, 10


def matmul_gflops(repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    return 2 * 2048**3 / median_seconds(lambda: jax.block_until_ready(f(a)), repeats) / 1e9


def step_flops(c) -> float:
    """Forward + activation-backward FLOPs of one prefix-tuning step (2x the forward)."""
    tokens = BATCH * LENGTH
    per_layer = c.hidden_size * (2 * c.num_heads * c.head_dim + 2 * c.kv_dim)
    per_layer += c.hidden_size * c.intermediate_size * 3
    matmul = 2 * tokens * (c.num_layers * per_layer + c.hidden_size * c.vocab_size)
    attention = 4 * tokens * (LENGTH + P) * c.num_heads * c.head_dim * c.num_layers
    return 2 * (matmul + attention)


def ours(reparam: str, repeats: int) -> tuple[float, float]:
    import jax
    import numpy as np

    from prefix_jax.methods import PrefixConfig, PrefixLM, PrefixParam, create_prefix
    from prefix_jax.models import load
    from prefix_jax.train_step import OptimConfig, Trainer, make_optimizer

    model, _ = load("smollm2", with_tokenizer=False)
    prefix, _ = create_prefix(model, PrefixConfig(length=P, reparam=reparam))
    tx = make_optimizer(OptimConfig(learning_rate=1e-4), PrefixParam)
    trainer = Trainer(PrefixLM(model, prefix), tx, PrefixParam)
    rng = np.random.default_rng(0)
    batch = {
        "tokens": jax.numpy.asarray(rng.integers(0, 49152, (BATCH, LENGTH)), jax.numpy.int32),
        "attention_mask": jax.numpy.ones((BATCH, LENGTH), bool),
        "loss_mask": jax.numpy.ones((BATCH, LENGTH), jax.numpy.int32),
    }
    key = jax.random.key(0)
    flops = step_flops(model.config)
    jax.block_until_ready(trainer.step(batch, key))
    return median_seconds(lambda: jax.block_until_ready(trainer.step(batch, key)), repeats), flops


def peft(projection: bool, repeats: int) -> float:
    import peft as peft_lib
    import torch
    import transformers

    from prefix_jax.models import resolve

    path = resolve("smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    config = peft_lib.PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=P,
        prefix_projection=projection,
        encoder_hidden_size=512,
    )
    model = peft_lib.get_peft_model(model, config).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = torch.randint(0, 49152, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    return median_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    peak = matmul_gflops(args.repeats)
    print(
        f"SmolLM2-135M prefix p={P}, batch {BATCH} x {LENGTH}, float32, AdamW, "
        f"{args.threads} threads, median of {args.repeats}; 2048^2 matmul: {peak:.0f} GFLOP/s"
    )
    print("| reparam | ours s | PEFT s | ours / PEFT | ours GFLOP/s | of matmul rate |")
    print("|---|---:|---:|---:|---:|---:|")
    for reparam in ("none", "mlp"):
        ours_s, flops = ours(reparam, args.repeats)
        peft_s = peft(reparam == "mlp", args.repeats)
        rate = flops / ours_s / 1e9
        print(
            f"| {reparam} | {ours_s:.2f} | {peft_s:.2f} | {ours_s / peft_s:.2f} | "
            f"{rate:.0f} | {rate / peak:.0%} |"
        )


if __name__ == "__main__":
    main()
