"""The accelerator variant of the benchmarks, in one short run (a few minutes on one GPU).

    python -m experiments.bench.gpu [--quick]

bfloat16 weights and activations (the prefix and optimizer state in float32), larger
batches, on JAX's default backend:
0. parity: our bf16 logits vs transformers' float32 logits on the same weights;
1. train step, batch 32 x 128 (`--train-shapes` for others): ours per method, and PEFT on
   CUDA when torch has it;
3. prefix overhead at sequence 512, batch 16: p in {0, 10, 200};
4. generation, greedy and beam 5, batch 16 and 64: ours vs transformers (CUDA);
5. MFU: our step's analytic FLOP/s against the card's nominal dense bf16 rate and an
   8192^2 bf16 matmul timed here.
`--quick` shrinks every size so the script can be checked on a CPU. `--model` takes any
checkpoint both sides can read: on a machine without the GGUF, a random-weight one from
`python -m experiments.bench.random_checkpoint DIR` (timings depend on shapes only).
"""

from __future__ import annotations

import argparse

from experiments.bench import generation, prefix_overhead, train_step

# Dense bf16 tensor FLOP/s from the vendors' data sheets (no sparsity).
NOMINAL_BF16_TFLOPS = {
    "H100": 989.0,  # H100 SXM; the PCIe card is 756
    "H200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5p": 459.0,
}


def nominal_tflops(device_kind: str) -> float | None:
    for name, tflops in NOMINAL_BF16_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return tflops
    return None


PARTS = ("train", "overhead", "generation")


def torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def bf16_logit_error(model, model_path: str, torch_device: str) -> float:
    """Relative L2 error of our bf16 forward against transformers in float32."""
    import numpy as np
    import torch

    tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 32))
    ours = np.asarray(model(tokens)[0])
    hf = train_step.load_hf(torch_device, "float32", model_path).eval()
    with torch.inference_mode():
        ref = hf(torch.as_tensor(tokens, device=torch_device)).logits.float().cpu().numpy()
    del hf
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU check")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="smollm2", help="name, GGUF file or HF directory")
    parser.add_argument(
        "--train-shapes", nargs="+", default=["32x128"], help="train step shapes, BATCHxLENGTH"
    )
    parser.add_argument(
        "--parts", nargs="+", default=list(PARTS), choices=PARTS, help="which tables to run"
    )
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp

    from prefix_jax.models import load

    quick = args.quick
    shapes = [(2, 16)] if quick else [tuple(map(int, s.split("x"))) for s in args.train_shapes]
    size = 512 if quick else 8192
    device = jax.devices()[0]
    cuda = torch_cuda() and not quick
    bf16 = jnp.bfloat16
    model, _ = load(args.model, with_tokenizer=False, param_dtype=bf16, dtype=bf16)
    matmul = train_step.matmul_gflops(args.repeats, size=size, dtype="bfloat16")
    nominal = nominal_tflops(device.device_kind)
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(
        f"bf16 matmul {size}^2: {matmul / 1e3:.1f} TFLOP/s; nominal: "
        f"{'unknown' if nominal is None else f'{nominal:.0f} TFLOP/s'}"
    )
    if torch_cuda() or quick:
        error = bf16_logit_error(model, args.model, "cuda" if torch_cuda() else "cpu")
        print(f"\n0. parity: |ours bf16 - transformers f32| / |ref| over logits = {error:.2e}")

    if "train" in args.parts:
        for batch, length in shapes:
            train_table(model, args, batch, length, matmul, nominal, cuda)
    if "overhead" in args.parts:
        overhead_table(model, args.repeats, quick)
    if "generation" in args.parts:
        generation_table(model, args, quick, cuda)


def train_table(model, args, batch: int, length: int, matmul: float, nominal, cuda: bool):
    print(f"\n1+5. train step, batch {batch} x {length}, bf16, median of {args.repeats}")
    print("| method | ours ms | PEFT ms | ours / PEFT | TFLOP/s | of matmul | MFU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method in ("prefix-mlp", "lora", "full"):
        ours_s = train_step.ours(model, method, args.repeats, batch, length)
        peft_s = (
            train_step.peft(method, args.repeats, batch, length, "cuda", "bfloat16", args.model)
            if cuda
            else None
        )
        rate = train_step.step_flops(model.config, method, batch, length) / ours_s / 1e12
        mfu = "" if nominal is None else f"{rate / nominal:.0%}"
        peft_cells = f"{peft_s * 1e3:.1f} | {ours_s / peft_s:.2f}" if peft_s else "- | -"
        print(
            f"| {method} | {ours_s * 1e3:.1f} | {peft_cells} | {rate:.1f} | "
            f"{rate * 1e3 / matmul:.0%} | {mfu} |"
        )


def overhead_table(model, repeats: int, quick: bool) -> None:
    seq, rows = (32, 2) if quick else (512, 16)
    print(f"\n3. prefix overhead, sequence {seq}, batch {rows}")
    print("| p | forward ms | overhead | decode ms | overhead |")
    print("|---:|---:|---:|---:|---:|")
    results = prefix_overhead.timings(model, rows, seq, (0, 10, 200), repeats)
    base = results[0]
    for p, (fwd, dec) in results.items():
        print(
            f"| {p} | {fwd * 1e3:.1f} | {fwd / base[0] - 1:+.1%} | {dec * 1e3:.1f} | "
            f"{dec / base[1] - 1:+.1%} |"
        )


def generation_table(model, args, quick: bool, cuda: bool) -> None:
    new = 8 if quick else 64
    hf = train_step.load_hf("cuda", "bfloat16", args.model).eval() if cuda else None
    print(f"\n4. generation, {new} new tokens, tokens/s")
    print("| decode | batch | ours | transformers | ours / transformers |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("greedy", "beam5"):
        for n in (2,) if quick else (16, 64):
            _, ours_s = generation.ours(model, mode, n, new, args.repeats)
            ours_rate = n * new / ours_s
            if hf is None:
                print(f"| {mode} | {n} | {ours_rate:.0f} | - | - |")
                continue
            hf_rate = n * new / generation.transformers_side(hf, mode, n, new, args.repeats)
            print(
                f"| {mode} | {n} | {ours_rate:.0f} | {hf_rate:.0f} | {ours_rate / hf_rate:.2f}x |"
            )


if __name__ == "__main__":
    main()
