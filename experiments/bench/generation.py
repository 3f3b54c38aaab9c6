"""Generation on SmolLM2: greedy and beam-5 tokens/s, batch 1 and 16, ours vs transformers.

    python -m experiments.bench.generation [--repeats 3] [--new-tokens 32] [--threads N]

Both sides decode the same left-padded prompts for exactly `--new-tokens` tokens (eos is
suppressed until then: `min_new_tokens` on both), float32, the same CPU threads. Tokens/s
counts generated tokens of the returned sequences (batch x new tokens; a beam search
returns one sequence per prompt). Our first call compiles; its time is reported apart.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from experiments.bench.timing import median_seconds
from experiments.bench.train_step import load_hf

PROMPT_LENGTH = 48
SETTINGS = [("greedy", 1), ("greedy", 16), ("beam5", 1), ("beam5", 16)]


def prompts(batch: int, vocab: int = 49152) -> tuple[np.ndarray, np.ndarray]:
    """Random prompts of lengths in [PROMPT_LENGTH/2, PROMPT_LENGTH], left-padded."""
    from prefix_jax.data.tokens import left_pad

    rng = np.random.default_rng(batch)
    lengths = rng.integers(PROMPT_LENGTH // 2, PROMPT_LENGTH + 1, batch)
    return left_pad([rng.integers(1, vocab, n).tolist() for n in lengths], pad_id=0)


def ours(model, mode: str, batch: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, median seconds) of one decode call."""
    import jax

    from prefix_jax.infer.decode import beam_search, greedy

    tokens, mask = prompts(batch)
    kw = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "eos_id": 2}
    if mode == "greedy":
        call = lambda: jax.block_until_ready(greedy(model, tokens, mask, **kw))  # noqa: E731
    else:
        call = lambda: jax.block_until_ready(  # noqa: E731
            beam_search(model, tokens, mask, beam_size=5, **kw)
        )
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    return first, median_seconds(call, repeats)


def transformers_side(model, mode: str, batch: int, new_tokens: int, repeats: int) -> float:
    import torch

    tokens, mask = prompts(batch)
    kw = {
        "input_ids": torch.as_tensor(tokens, dtype=torch.long, device=model.device),
        "attention_mask": torch.as_tensor(mask, dtype=torch.long, device=model.device),
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "num_beams": 1 if mode == "greedy" else 5,
        "pad_token_id": 0,
        "eos_token_id": 2,
    }

    def call():
        model.generate(**kw)
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        call()
        return median_seconds(call, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    import torch

    from prefix_jax.models import load

    torch.set_num_threads(args.threads)
    model, _ = load("smollm2", with_tokenizer=False)
    hf = load_hf().eval()
    n = args.new_tokens
    print(
        f"SmolLM2-135M generation, prompts {PROMPT_LENGTH // 2}-{PROMPT_LENGTH} tokens, "
        f"{n} new tokens, float32, {args.threads} threads, median of {args.repeats}"
    )
    print(
        "| decode | batch | ours tok/s | transformers tok/s | ours / transformers | "
        "our compile + 1st call s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for mode, batch in SETTINGS:
        first, ours_s = ours(model, mode, batch, n, args.repeats)
        hf_s = transformers_side(hf, mode, batch, n, args.repeats)
        ours_rate, hf_rate = batch * n / ours_s, batch * n / hf_s
        print(
            f"| {mode} | {batch} | {ours_rate:.1f} | {hf_rate:.1f} | "
            f"{ours_rate / hf_rate:.2f}x | {first:.1f} |"
        )


if __name__ == "__main__":
    main()
