"""A Hugging Face checkpoint with SmolLM2-135M's architecture and random weights.

    python -m experiments.bench.random_checkpoint OUT_DIR [--seed 0]

For benchmarks on machines that cannot hold the real weights (the device machine takes
at most 64 MiB of files; the GGUF is 98 MB): step time, memory and decode speed depend
on the shapes, not on the values, and both sides (ours and transformers) read the same
safetensors. The shapes are SmolLM2-135M-Instruct's published config.json
(`prefix_jax.models.catalog`); `tests/test_bench.py` checks them against the GGUF.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefix_jax.models.catalog import CATALOG

SMOLLM2_135M = {
    **{k: v for k, v in CATALOG["smollm2-135m"].config.items() if k != "model_type"},
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def write(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Write config.json + model.safetensors (float32, transformers' own init) to `out_dir`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**SMOLLM2_135M, **overrides})
    model = transformers.LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {write(args.out_dir, args.seed)}")


if __name__ == "__main__":
    main()
