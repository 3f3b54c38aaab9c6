"""Train step of a large random-weight model on one accelerator: ours vs PEFT + transformers.

    python -m experiments.bench.gpu_large [--shape llama-3-8b] [--batch 4] [--seq 2048]

Both models are created on the device from the architecture alone (`prefix_jax.models.
catalog`; random weights, bf16), so no checkpoint travels. Prefix-tuning p=10 with the MLP;
AdamW on the prefix only. Prints step time, tokens/s and MFU for both sides. FLOPs are
counted analytically: 4 N per token for the frozen backbone (forward, plus the backward
pass's activation gradients) plus attention's, the same count for both sides; our remat
recompute is not counted as useful work. MFU is against the card's nominal dense bf16 rate.
"""

from __future__ import annotations

import argparse

P = 10


def hf_config(name: str):
    import transformers

    from prefix_jax.models.catalog import CATALOG

    fields = {k: v for k, v in CATALOG[name].config.items() if k not in ("model_type",)}
    return transformers.LlamaConfig(**fields)


def ours_seconds(name: str, batch: int, length: int, repeats: int, remat: str | None) -> float:
    import jax.numpy as jnp
    from flax import nnx

    from experiments.bench import train_step
    from prefix_jax.models import Transformer
    from prefix_jax.models.catalog import model_config

    model = Transformer(
        model_config(name),
        rngs=nnx.Rngs(0),
        param_dtype=jnp.bfloat16,
        dtype=jnp.bfloat16,
        remat_policy=remat,
    )
    return train_step.ours(model, "prefix-mlp", repeats, batch, length)


def peft_seconds(name: str, batch: int, length: int, repeats: int, device: str) -> float:
    import torch
    import transformers

    from experiments.bench import train_step

    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        hf = transformers.LlamaForCausalLM(hf_config(name))
    torch.set_default_dtype(torch.float32)
    model = train_step.peft_wrap(hf, "prefix-mlp")
    return train_step.peft_seconds(model, repeats, batch, length, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-3-8b")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--remat", default="full", help="our remat policy ('none': off)")
    parser.add_argument("--skip-peft", action="store_true")
    args = parser.parse_args()
    import jax

    from experiments.bench import train_step
    from experiments.bench.gpu import nominal_tflops, torch_cuda
    from prefix_jax.models.catalog import model_config
    from prefix_jax.scale.aot import train_flops

    device = jax.devices()[0]
    nominal = nominal_tflops(device.device_kind)
    c = model_config(args.shape)
    flops = train_flops(c, train_step.variant_config("prefix-mlp", P), args.batch, args.seq)
    tokens = args.batch * args.seq
    remat = None if args.remat == "none" else args.remat
    rows = {f"ours (remat {args.remat})": ours_seconds(
        args.shape, args.batch, args.seq, args.repeats, remat
    )}  # fmt: skip
    if not args.skip_peft:
        torch_device = "cuda" if torch_cuda() else "cpu"
        rows["PEFT + transformers"] = peft_seconds(
            args.shape, args.batch, args.seq, args.repeats, torch_device
        )
    print(
        f"{args.shape} ({c.num_params() / 1e9:.2f}B), prefix p={P} (MLP), bf16, batch "
        f"{args.batch} x {args.seq}, {device.device_kind}; {flops / 1e12:.1f} TFLOP per step "
        f"(4N per token + attention); nominal {nominal or 'unknown'} TFLOP/s"
    )
    print("| side | step s | tokens/s | TFLOP/s | MFU |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in rows.items():
        rate = flops / seconds / 1e12
        mfu = f"{rate / nominal:.1%}" if nominal else "n/a"
        print(f"| {name} | {seconds:.3f} | {tokens / seconds:,.0f} | {rate:.1f} | {mfu} |")


if __name__ == "__main__":
    main()
