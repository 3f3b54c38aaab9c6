"""Peak memory of training on SmolLM2 per method: ours vs PEFT, and ours with remat.

    python -m experiments.bench.memory [--methods prefix-mlp full ...]

Every run is its own fresh process (so no run inherits another's heap): load the model,
build the method, take one warm-up step, then sample the resident set (/proc/self/statm,
every millisecond) over three more steps. Reported: the peak RSS during those steps minus
the RSS right after importing the framework, i.e. weights + trainable state + gradients +
activations + workspace, as the operating system sees them. For ours also XLA's own
account of the compiled step (arguments + outputs not aliased to them + temporaries).
Batch 8 x 64, float32, as in `train_step`. Linux only (statm).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time

from experiments.bench import train_step

RUNS = [
    ("ours", "prefix-none", ""),
    ("ours", "prefix-mlp", ""),
    ("ours", "prefix-mlp", "full"),
    ("ours", "prompt", ""),
    ("ours", "lora", ""),
    ("ours", "full", ""),
    ("ours", "full", "full"),
    ("PEFT", "prefix-none", ""),
    ("PEFT", "prefix-mlp", ""),
    ("PEFT", "prompt", ""),
    ("PEFT", "lora", ""),
    ("PEFT", "full", ""),
]
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class PeakSampler:
    """Highest RSS seen by a background thread while the `with` block runs."""

    def __enter__(self) -> PeakSampler:
        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc), so loading leftovers do not count."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def run_ours(method: str, remat: str) -> dict:
    import jax

    from prefix_jax.models import load

    base = rss_mb()
    model, _ = load("smollm2", with_tokenizer=False, remat_policy=remat or None)
    trainer = train_step.our_trainer(model, method, keep_model=False)
    batch, key = train_step.random_batch(), jax.random.key(0)
    compiled = trainer._step.lower(trainer.state, trainer.frozen, batch, key).compile()
    stats = compiled.memory_analysis()
    xla_mb = None
    if stats is not None:
        live = stats.argument_size_in_bytes + stats.output_size_in_bytes
        live += stats.temp_size_in_bytes - stats.alias_size_in_bytes
        xla_mb = live / 2**20
    jax.block_until_ready(trainer.step(batch, key))
    release_free_heap()
    with PeakSampler() as sampler:
        for _ in range(3):
            jax.block_until_ready(trainer.step(batch, key))
    return {"peak_mb": sampler.peak - base, "xla_mb": xla_mb}


def run_peft(method: str) -> dict:
    import torch

    base = rss_mb()
    step = train_step.peft_step_fn(train_step.peft_model(method))
    tokens = torch.randint(0, 49152, (8, 64), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    step(tokens, mask, tokens)
    release_free_heap()
    with PeakSampler() as sampler:
        for _ in range(3):
            step(tokens, mask, tokens)
    return {"peak_mb": sampler.peak - base, "xla_mb": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=train_step.METHODS)
    parser.add_argument(
        "--one", nargs=3, metavar=("SIDE", "METHOD", "REMAT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        side, method, remat = args.one
        import torch  # both sides: the same imports in the baseline

        del torch
        result = run_ours(method, remat) if side == "ours" else run_peft(method)
        print(json.dumps(result))
        return
    runs = [r for r in RUNS if not args.methods or r[1] in args.methods]
    print("SmolLM2-135M training memory, batch 8 x 64, float32; MB above the imported framework")
    print("| side | method | remat | peak RSS MB | XLA live MB |")
    print("|---|---|---|---:|---:|")
    for side, method, remat in runs:
        command = [sys.executable, "-m", "experiments.bench.memory", "--one", side, method, remat]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        xla = "" if r["xla_mb"] is None else f"{r['xla_mb']:.0f}"
        print(f"| {side} | {method} | {remat or 'off'} | {r['peak_mb']:.0f} | {xla} |")


if __name__ == "__main__":
    main()
