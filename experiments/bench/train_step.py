"""Train steps on SmolLM2 per method: ours (jitted) vs PEFT + transformers, side by side.

    python -m experiments.bench.train_step [--repeats 5] [--threads N] [--methods ...]
        [--data PATH/devset.csv --data-batches 12]

Table 1: batch 8 x 64 random tokens, AdamW, float32, the same CPU threads for both sides:
prefix p=10 (reparam none and mlp), prompt tuning p=10, LoRA r=8 on q and v, full
fine-tuning. Median step time after warm-up, the ratio, and our achieved FLOP/s as a
share of a 2048^2 float32 matmul timed in the same run (the distance to what this CPU can
do). FLOPs are counted analytically (XLA's cost analysis counts a scanned layer once):
forward matmuls x2 for the parameter-efficient methods (the backward pass computes
activation gradients only), x3 for full fine-tuning (weight gradients too).

Table 2 (with `--data`, the E2E devset): tokens/s of prefix-tuning (mlp) over the same
E2E examples, ours in our length-grouped batches (default buckets, logits at scored
positions only; then logits everywhere; then power-of-two buckets) vs PEFT in shuffled
batches padded to each batch's longest row (what a plain PyTorch loop does).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from experiments.bench.timing import best_seconds, median_seconds

BATCH, LENGTH, P, LORA_RANK = 8, 64, 10, 8
# The benchmarked variants: (our method, its config block's settings); prefix and prompt
# get `virtual_tokens` (default P) as their length. PEFT's twin of each is `peft_config`.
VARIANTS = {
    "prefix-none": ("prefix", {"reparam": "none", "init": "random"}),
    "prefix-mlp": ("prefix", {"reparam": "mlp", "init": "random"}),
    "prompt": ("prompt", {"init": "random"}),
    "lora": (
        "lora",
        {"rank": LORA_RANK, "alpha": 2.0 * LORA_RANK, "dropout": 0.0, "targets": ("q", "v")},
    ),
    "full": ("full", {}),
}
METHODS = tuple(VARIANTS)


def matmul_gflops(repeats: int, size: int = 2048, dtype: str = "float32") -> float:
    """The machine's matmul ceiling: the fastest of 4 x `repeats` square matmuls."""
    import jax

    a = jax.random.normal(jax.random.key(0), (size, size), dtype)  # not constant data
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    return 2 * size**3 / best_seconds(lambda: jax.block_until_ready(f(a)), 4 * repeats) / 1e9


def variant_config(variant: str, virtual_tokens: int = P):
    """The experiment config (the library defaults) that trains `variant`."""
    from prefix_jax.config.defaults import get_base_config
    from prefix_jax.methods import registry

    method, block = VARIANTS[variant]
    c = get_base_config()
    c.method = method
    c.prefix.length = c.prompt.length = virtual_tokens
    c[registry.get(method).config_block].update(block)
    return c


def step_flops(c, method: str, batch: int = BATCH, length: int = LENGTH) -> float:
    """Analytic FLOPs of one train step of the variant `method` on [batch, length] tokens."""
    from prefix_jax.scale.aot import train_flops

    return train_flops(c, variant_config(method), batch, length)


def our_trainer(
    model, method: str, learning_rate: float = 1e-4, keep_model: bool = True, virtual_tokens=P
):
    """A Trainer for `method` on the loaded base `model`; full fine-tuning trains a copy of
    the weights unless `keep_model=False` (its step donates the weights it trains).
    Prefix and prompt get `virtual_tokens`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from prefix_jax.methods import registry
    from prefix_jax.train.step import OptimConfig, Trainer, make_optimizer

    settings = variant_config(method, virtual_tokens)
    chosen = registry.get(settings.method)
    if chosen.trains_base_weights and keep_model:
        graphdef, weights = nnx.split(model)
        model = nnx.merge(graphdef, jax.tree.map(jnp.copy, weights))
    lm, trainable, _ = chosen.create(model, settings)
    tx = make_optimizer(OptimConfig(learning_rate=learning_rate), trainable)
    return Trainer(lm, tx, trainable)


def random_batch(batch: int = BATCH, length: int = LENGTH) -> dict:
    """Random tokens, every position attended and scored."""
    import jax.numpy as jnp

    tokens = np.random.default_rng(0).integers(0, 49152, (batch, length))
    return {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "attention_mask": jnp.ones((batch, length), bool),
        "loss_mask": jnp.ones((batch, length), jnp.int32),
    }


def ours(model, method: str, repeats: int, batch: int = BATCH, length: int = LENGTH) -> float:
    """Median seconds of our jitted step on a random [batch, length] batch, after warm-up."""
    import jax

    trainer = our_trainer(model, method)
    batch, key = random_batch(batch, length), jax.random.key(0)
    jax.block_until_ready(trainer.step(batch, key))
    return median_seconds(lambda: jax.block_until_ready(trainer.step(batch, key)), repeats)


def load_hf(device: str = "cpu", dtype: str = "float32", model: str = "smollm2"):
    """transformers' model from the same files as ours (`model`: a name, GGUF or HF dir)."""
    import torch
    import transformers

    from prefix_jax.models import resolve

    path = resolve(model)
    where = (
        {"pretrained_model_name_or_path": path}
        if path.is_dir()
        else {"pretrained_model_name_or_path": path.parent, "gguf_file": path.name}
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    return hf.to(device=device, dtype=getattr(torch, dtype))


def peft_model(method: str, device: str = "cpu", dtype: str = "float32", model: str = "smollm2"):
    """The transformers model with PEFT's version of `method` (full: the bare model)."""
    return peft_wrap(load_hf(device, dtype, model), method)


def peft_wrap(model, method: str, virtual_tokens: int = P):
    """PEFT's version of the variant `method` around a transformers model (full: the bare
    model)."""
    import peft as peft_lib

    prefix = {"num_virtual_tokens": virtual_tokens, "encoder_hidden_size": 512}
    configs = {
        "prefix-none": lambda: peft_lib.PrefixTuningConfig(
            task_type="CAUSAL_LM", prefix_projection=False, **prefix
        ),
        "prefix-mlp": lambda: peft_lib.PrefixTuningConfig(
            task_type="CAUSAL_LM", prefix_projection=True, **prefix
        ),
        "prompt": lambda: peft_lib.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens
        ),
        "lora": lambda: peft_lib.LoraConfig(
            task_type="CAUSAL_LM",
            r=LORA_RANK,
            lora_alpha=2 * LORA_RANK,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
        ),
        "full": None,
    }
    if configs[method] is None:
        return model.train()
    return peft_lib.get_peft_model(model, configs[method]()).train()


def peft_step_fn(model):
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(tokens, mask, labels):
        loss = model(input_ids=tokens, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def peft(
    method: str,
    repeats: int,
    batch: int = BATCH,
    length: int = LENGTH,
    device: str = "cpu",
    dtype: str = "float32",
    model: str = "smollm2",
) -> float:
    """Median seconds of PEFT's step on a random [batch, length] batch, after warm-up."""
    return peft_seconds(peft_model(method, device, dtype, model), repeats, batch, length, device)


def peft_seconds(model, repeats: int, batch: int, length: int, device: str = "cpu") -> float:
    """Median seconds of a PEFT model's AdamW step on random tokens, after warm-up."""
    import torch

    step = peft_step_fn(model)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 49152, (batch, length), generator=generator).to(device)
    mask = torch.ones_like(tokens)

    def call():
        step(tokens, mask, tokens)
        if device == "cuda":
            torch.cuda.synchronize()

    call()
    return median_seconds(call, repeats)


# --- tokens/s on real E2E lengths -------------------------------------------------------


POWERS_OF_TWO = (32, 64, 128, 256)  # the default buckets before docs/benchmarks.md change 3


def e2e_data(path: str):
    from prefix_jax.data import EncodeConfig, encode_examples, load_task
    from prefix_jax.models import load

    model, tokenizer = load("smollm2")
    examples = load_task("e2e", path, split="train").examples
    return model, encode_examples(examples, tokenizer, EncodeConfig(separator="\nTarget:\n"))


def e2e_batches(data, n_batches: int, buckets=None) -> tuple[list[dict], list[int]]:
    """Our first `n_batches` batches of E2E (default buckets unless given), and their rows."""
    from prefix_jax.data import BatchIterator

    iterator = BatchIterator(data, BATCH, buckets=buckets, seed=0)
    batches = [b for _, b in zip(range(n_batches), iterator.batches(0), strict=False)]
    rows = [i for plan in iterator.plan(0)[:n_batches] for i in plan if i >= 0]
    return batches, rows


def ours_e2e(model, batches, repeats: int = 3, all_logits: bool = False) -> tuple[float, float]:
    """(tokens/s, padded share) over `batches`, median of `repeats` passes after one that
    compiles each shape. `all_logits`: unembed every position (drop `score_positions`)."""
    import jax

    from prefix_jax.train.loop import to_device

    trainer = our_trainer(model, "prefix-mlp")
    key = jax.random.key(0)
    if all_logits:
        batches = [{k: v for k, v in b.items() if k != "score_positions"} for b in batches]
    device_batches = [to_device(b) for b in batches]
    for b in device_batches:
        jax.block_until_ready(trainer.step(b, key))

    def one_pass():
        for b in device_batches:
            metrics = trainer.step(b, key)
        jax.block_until_ready(metrics)

    real = sum(float(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["tokens"].size for b in batches)
    return real / median_seconds(one_pass, repeats), 1 - real / padded


def peft_e2e(data, rows: list[int]) -> tuple[float, float]:
    """(tokens/s, padded share) of PEFT prefix-tuning (mlp) on the same rows, shuffled into
    batches padded to their longest row."""
    import torch

    step = peft_step_fn(peft_model("prefix-mlp"))
    order = np.random.default_rng(1).permutation(rows)
    batches = []
    for start in range(0, len(order), BATCH):
        chosen = [int(i) for i in order[start : start + BATCH]]
        width = max(len(data.sequences[i]) for i in chosen)
        tokens = torch.zeros((len(chosen), width), dtype=torch.long)
        mask = torch.zeros_like(tokens)
        labels = torch.full_like(tokens, -100)  # scored: target tokens only, as ours
        for r, i in enumerate(chosen):
            sequence = torch.as_tensor(data.sequences[i], dtype=torch.long)
            tokens[r, : len(sequence)] = sequence
            mask[r, : len(sequence)] = 1
            labels[r, data.prompt_lengths[i] : len(sequence)] = sequence[data.prompt_lengths[i] :]
        batches.append((tokens, mask, labels))
    step(*batches[0])
    start = time.perf_counter()
    for b in batches:
        step(*b)
    real = sum(float(m.sum()) for _, m, _ in batches)
    padded = sum(t.numel() for t, _, _ in batches)
    return real / (time.perf_counter() - start), 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--data", help="E2E devset.csv for the tokens/s table")
    parser.add_argument("--data-batches", type=int, default=12)
    args = parser.parse_args()
    import torch

    from prefix_jax.models import load

    torch.set_num_threads(args.threads)
    peak = matmul_gflops(args.repeats)
    model, _ = load("smollm2", with_tokenizer=False)
    print(
        f"SmolLM2-135M train step, batch {BATCH} x {LENGTH}, float32, AdamW, "
        f"{args.threads} threads, median of {args.repeats}; 2048^2 matmul: {peak:.0f} GFLOP/s"
    )
    print("| method | ours s | PEFT s | ours / PEFT | ours GFLOP/s | of matmul rate |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in args.methods:
        ours_s = ours(model, method, args.repeats)
        peft_s = peft(method, args.repeats)
        rate = step_flops(model.config, method) / ours_s / 1e9
        print(
            f"| {method} | {ours_s:.2f} | {peft_s:.2f} | {ours_s / peft_s:.2f} | "
            f"{rate:.0f} | {rate / peak:.0%} |"
        )
    if args.data:
        model, data = e2e_data(args.data)
        batches, rows = e2e_batches(data, args.data_batches)
        ours_rate, ours_pad = ours_e2e(model, batches, args.repeats)
        all_rate, _ = ours_e2e(model, batches, args.repeats, all_logits=True)
        pow2_batches = e2e_batches(data, args.data_batches, POWERS_OF_TWO)[0]
        pow2_rate, pow2_pad = ours_e2e(model, pow2_batches, args.repeats)
        peft_rate, peft_pad = peft_e2e(data, rows)
        print(f"\nPrefix-tuning (mlp) on {len(rows)} E2E examples, batch {BATCH}")
        print("| | tokens/s | padding share | vs PEFT |")
        print("|---|---:|---:|---:|")
        for name, rate, pad in [
            ("ours, length-grouped, default buckets", ours_rate, ours_pad),
            ("ours, the same, logits at every position", all_rate, ours_pad),
            ("ours, length-grouped, power-of-two buckets", pow2_rate, pow2_pad),
            ("PEFT, shuffled, padded to batch max", peft_rate, peft_pad),
        ]:
            print(f"| {name} | {rate:.0f} | {pad:.0%} | {rate / peft_rate:.2f}x |")


if __name__ == "__main__":
    main()
