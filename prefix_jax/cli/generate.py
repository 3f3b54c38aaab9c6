"""Greedy generation from the command line.

    prefix-jax generate --model smollm2 --prompt "The capital of France is" \
        --max-new-tokens 30
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax

from prefix_jax.data.tokens import left_pad, pad_id_of
from prefix_jax.infer.decode import greedy
from prefix_jax.models import load


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="HF directory, .gguf file or name")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model, tokenizer = load(args.model)
    print(f"loaded {model.config.name or args.model} in {time.perf_counter() - start:.1f}s")
    prompts = args.prompt
    if args.chat:
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad_id = pad_id_of(tokenizer)
    tokens, mask = left_pad(ids, pad_id, multiple=16)
    start = time.perf_counter()
    out = jax.device_get(
        greedy(
            model,
            tokens,
            mask,
            max_new_tokens=args.max_new_tokens,
            eos_id=tokenizer.eos_token_id,
            pad_id=pad_id,
        )
    )
    elapsed = time.perf_counter() - start
    for prompt, row in zip(args.prompt, out, strict=True):
        text = tokenizer.decode(row, skip_special_tokens=True)
        print(f"--- {prompt}\n{text}")
    print(f"generated {out.size} tokens in {elapsed:.1f}s (includes compilation)")
    return 0
