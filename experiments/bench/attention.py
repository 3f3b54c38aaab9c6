"""Attention kernels side by side: memory and time of one train step, logits, decoding.

    python -m experiments.bench.attention                 # CPU table (the project machine)
    python -m experiments.bench.attention --gpu           # the accelerator run, one GPU
    python -m experiments.bench.attention --gpu --shapes smollm2-135m   # its shorter half
    python -m experiments.bench.attention --quick         # tiny shapes, to check the script

Every row is prefix-tuning (MLP, AdamW on the prefix) on random weights of a public
architecture's shapes (`prefix_jax.models.catalog`; no checkpoint travels), one device:
- `temps GiB`: temporaries of the compiled step (XLA's `memory_analysis()`);
- `step s`, `tokens/s`: median step time after warm-up (skipped with `--no-time`, and for
  rows marked memory-only: dense attention at 16 x 2048 is a memory table, not a workload
  for two CPU cores);
- `peak GiB`: the device's peak bytes in use (GPUs report it; CPUs do not);
- `max |dlogit|`: the largest logit difference to the dense `xla` kernel on one forward pass.
On GPUs, `--gpu` adds PEFT + transformers (SDPA attention) on the same shapes and greedy
decoding tokens/s at batch 64 after a 2,048-token prompt.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

# (shape, p, batch, seq, time it?) per platform
CPU_ROWS = [
    ("smollm2-135m", 10, 8, 64, True),
    ("smollm2-135m", 10, 4, 512, True),
    ("smollm2-135m", 10, 16, 2048, False),
    ("smollm2-135m", 200, 16, 2048, False),
]
GPU_ROWS = [
    (shape, p, batch, seq, True)
    for shape in ("smollm2-135m", "llama-3-8b")
    for p in (10, 200)
    for batch, seq in ((16, 512), (8, 2048), (2, 8192))
]
QUICK_ROWS = [("tiny", 10, 2, 64, True), ("tiny", 200, 2, 256, True)]
TINY = {
    "vocab_size": 512,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "model_type": "llama",
}


def build(shape: str, attention: str, dtype):
    from flax import nnx

    from prefix_jax.models import Transformer
    from prefix_jax.models.catalog import model_config
    from prefix_jax.models.config import config_from_hf

    config = config_from_hf(TINY, name="tiny") if shape == "tiny" else model_config(shape)
    return Transformer(
        config,
        rngs=nnx.Rngs(0),
        param_dtype=dtype,
        dtype=dtype,
        remat_policy="full" if shape == "llama-3-8b" else None,
        attention=attention,
    )


def device_peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def ours(shape, p, batch, seq, attention, dtype, repeats, timed) -> dict:
    """One train step of ours: compiled memory, median time, and a forward's logits."""
    import jax
    import jax.numpy as jnp

    from experiments.bench import train_step
    from prefix_jax.methods import PrefixLM

    model = build(shape, attention, dtype)
    trainer = train_step.our_trainer(model, "prefix-mlp", virtual_tokens=p)
    data = train_step.random_batch(batch, seq)
    data["tokens"] = data["tokens"] % model.config.vocab_size
    memory = trainer.lower_step(data).compile().memory_analysis()
    row = {"temps_bytes": memory.temp_size_in_bytes}
    if timed:
        key = jax.random.key(0)
        seconds = train_step.median_seconds(
            lambda: jax.block_until_ready(trainer.step(data, key)), repeats + 1
        )
        row.update(step_s=seconds, tokens_per_s=batch * seq / seconds)
        row["peak_bytes"] = device_peak_bytes()
    lm = trainer.model()
    assert isinstance(lm, PrefixLM)
    few = {k: v[:2, : min(seq, 512)] for k, v in data.items()}
    logits, _ = jax.jit(lambda m, t, a: m(t, a))(lm, few["tokens"], few["attention_mask"])
    row["logits"] = jnp.asarray(logits, jnp.float32)
    return row


def peft_row(shape, p, batch, seq, repeats) -> dict:
    import torch
    import transformers

    from experiments.bench import train_step
    from experiments.bench.gpu_large import hf_config

    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        hf = transformers.LlamaForCausalLM(hf_config(shape), attn_implementation="sdpa")
    torch.set_default_dtype(torch.float32)
    if shape == "llama-3-8b":
        hf.gradient_checkpointing_enable()
    model = train_step.peft_wrap(hf, "prefix-mlp", virtual_tokens=p)
    torch.cuda.reset_peak_memory_stats()
    seconds = train_step.peft_seconds(model, repeats, batch, seq, "cuda")
    row = {"step_s": seconds, "tokens_per_s": batch * seq / seconds}
    row["peak_bytes"] = torch.cuda.max_memory_allocated()
    del model, hf
    gc.collect()
    torch.cuda.empty_cache()
    return row


def decode_tokens_per_s(shape, attention, dtype, batch=64, prompt=2048, new=64) -> float:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from prefix_jax.infer import decode
    from prefix_jax.models import PrefixKV

    model = build(shape, attention, dtype)
    c = model.config
    kv = jnp.zeros((c.num_layers, 1, 10, c.num_kv_heads, c.head_dim), dtype)
    tokens = np.random.default_rng(0).integers(1, c.vocab_size, (batch, prompt))
    mask = np.ones_like(tokens, bool)

    def run():
        out = decode.greedy(model, tokens, mask, max_new_tokens=new, prefix=PrefixKV(kv, kv))
        return jax.block_until_ready(out)

    run()
    start = time.perf_counter()
    run()
    return batch * new / (time.perf_counter() - start)


def gib(x) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the accelerator rows, bf16")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (checks the script)")
    parser.add_argument("--no-time", action="store_true", help="memory and logits only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--shapes", default="", help="comma-separated shapes to keep (default: every row's)"
    )
    parser.add_argument("--json", type=Path, help="append each row as a JSON line")
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp

    on_gpu = jax.default_backend() == "gpu"
    dtype = jnp.bfloat16 if args.gpu else jnp.float32
    rows = QUICK_ROWS if args.quick else GPU_ROWS if args.gpu else CPU_ROWS
    if args.shapes:
        rows = [row for row in rows if row[0] in args.shapes.split(",")]
    kernels = ["xla", "flash"] + (["cudnn"] if on_gpu else [])
    print(f"{jax.devices()[0].device_kind}, {jnp.dtype(dtype).name}")
    print("| shape | p | batch x seq | kernel | temps GiB | step s | tokens/s | peak GiB | "
          "max abs dlogit |")  # fmt: skip
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for shape, p, batch, seq, timed in rows:
        timed = timed and not args.no_time
        results = {}
        for kernel in kernels:
            try:
                results[kernel] = ours(shape, p, batch, seq, kernel, dtype, args.repeats, timed)
                gc.collect()  # the last kernel's model and trainer
            except Exception as e:  # a kernel that does not run here is a row, not a crash
                results[kernel] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
        if args.gpu and on_gpu and timed:
            try:
                results["PEFT (SDPA)"] = peft_row(shape, p, batch, seq, args.repeats)
            except Exception as e:
                results["PEFT (SDPA)"] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
        reference = results.get("xla", {}).get("logits")
        for kernel, r in results.items():
            diff = "-"
            if reference is not None and r.get("logits") is not None:
                diff = f"{float(jnp.abs(r['logits'] - reference).max()):.1e}"
            if "error" in r:
                print(f"| {shape} | {p} | {batch} x {seq} | {kernel} | {r['error']} |")
                continue
            step = f"{r['step_s']:.3f}" if "step_s" in r else "-"
            rate = f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else "-"
            print(
                f"| {shape} | {p} | {batch} x {seq} | {kernel} | {gib(r.get('temps_bytes'))} | "
                f"{step} | {rate} | {gib(r.get('peak_bytes'))} | {diff} |",
                flush=True,
            )
            if args.json:
                record = {k: v for k, v in r.items() if k != "logits"}
                record.update(shape=shape, p=p, batch=batch, seq=seq, kernel=kernel)
                with args.json.open("a") as f:
                    f.write(json.dumps(record) + "\n")
    if args.gpu or args.quick:
        shape = "tiny" if args.quick else "smollm2-135m"
        batch, prompt = (4, 64) if args.quick else (64, 2048)
        print(f"\ngreedy decoding, {shape}, batch {batch}, {prompt}-token prompt, p=10")
        print("| kernel | tokens/s |\n|---|---:|")
        for kernel in kernels:
            rate = decode_tokens_per_s(shape, kernel, dtype, batch=batch, prompt=prompt)
            print(f"| {kernel} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
