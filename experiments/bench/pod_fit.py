"""Per-chip memory of the train and decode steps on TPU pod slices, before/after constraints.

    python -m experiments.bench.pod_fit [--out experiments/results/pod_fit/pod_fit.jsonl] \
        [--only N,M] [--skip-before]

Compiles each row of `ROWS` with `prefix-jax aot` (the E2E config with the row's model,
method, mesh, batch and remat, in bfloat16) for its TPU topology (libtpu, no TPU needed),
once as the project runs now and, for rows marked so, once without the activation sharding
constraints (how the step compiled before activations had logical axes; `--skip-before`
leaves those out when only the current step is re-measured). Each compile runs in its own
process. Prints one markdown table; every result is also appended
to `--out` as a JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "e2e.py"
BF16 = ("--config.param_dtype=bfloat16", "--config.dtype=bfloat16")
FSDP = '(("data",1),("fsdp",-1),("tensor",1))'
# (model, topology, mesh, batch, seq, remat, method, compare without constraints, extra args)
ROWS = [
    ("llama-3-8b", "v5e-256", FSDP, 256, 512, "none", "prefix", True, ()),
    ("llama-3-8b", "v5e-256", FSDP, 256, 512, "full", "prefix", True, ()),
    ("llama-3-8b", "v5e-256", FSDP, 256, 128, "full", "prefix", True, ()),
    ("llama-3-8b", "v5e-256", FSDP, 256, 2048, "full", "prefix", True, ()),
    ("llama-3-8b", "v5e-256", '(("data",16),("fsdp",16),("tensor",1))', 256, 512, "full",
     "prefix", True, ()),
    ("llama-3-70b", "v5p-256", FSDP, 128, 512, "full", "prefix", True, ()),
    ("llama-3-8b", "v5e-256", '(("data",16),("fsdp",4),("tensor",4))', 256, 2048, "full",
     "prefix", True, ()),
    ("llama-3-70b", "v5p-512", FSDP, 256, 2048, "full", "prefix", True, ()),
    ("llama-3-8b", "v5e-256", FSDP, 256, 2048, "full", "prompt", True, ()),
    ("llama-3-8b", "v5e-256", FSDP, 256, 2048, "full", "lora", True, ()),
    ("llama-3-8b", "v5e-256", FSDP, 256, 2048, "full", "full", True, ()),
    ("llama-3-70b", "v5p-512", FSDP, 0, 0, "-", "prefix", False,
     ("--decode-batch", "256", "--cache-length", "2048")),
    # long sequences and a long prefix: splash (what auto picks on TPU) vs the dense kernel
    ("llama-3-8b", "v5e-256", FSDP, 256, 8192, "full", "prefix", False,
     ("--config.prefix.length=200", "--config.attention=splash")),
    ("llama-3-8b", "v5e-256", FSDP, 256, 8192, "full", "prefix", False,
     ("--config.prefix.length=200", "--config.attention=xla")),
]  # fmt: skip


def run(row, constrained: bool, out: Path) -> dict | None:
    model, topo, mesh, batch, seq, remat, method, _, extra = row
    cmd = [sys.executable, "-m", "prefix_jax.cli", "aot", "--config", f"{CONFIG}:method={method}"]
    cmd += ["--topology", topo, f"--config.model={model}", f"--config.mesh={mesh}", *BF16]
    cmd += ["--json", str(out), *extra]
    if batch:
        remat = "" if remat == "none" else remat
        cmd += [f"--config.batch_size={batch}", "--seq", str(seq), f"--config.remat={remat}"]
    else:
        cmd += ["--no-train"]
    if not constrained:  # as the project compiled before: no constraints, dense attention
        cmd += ["--no-constraints", "--config.attention=xla"]
    before = out.read_text().count("\n") if out.exists() else 0
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = out.read_text().splitlines() if out.exists() else []
    if done.returncode or len(lines) == before:
        print(f"FAILED: {' '.join(cmd)}\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("experiments/results/pod_fit/pod_fit.jsonl")
    )
    parser.add_argument("--only", default="", help="comma-separated row numbers (from 0)")
    parser.add_argument(
        "--skip-before", action="store_true", help="compile only the current step of each row"
    )
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picked = [int(i) for i in args.only.split(",")] if args.only else range(len(ROWS))
    print(
        "| # | model | topology | mesh | step | batch x len | remat | method | attention | "
        "before: total GiB | total GiB | temps GiB | floor GiB | total/floor | HBM GiB | fits |"
    )
    print("|---|---|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for i in picked:
        row = ROWS[i]
        compare = row[7] and not args.skip_before
        before = run(row, constrained=False, out=args.out) if compare else None
        after = run(row, constrained=True, out=args.out)
        if after is None:
            continue
        g = 2**30
        mesh = "x".join(f"{k} {v}" for k, v in after["mesh"].items() if v > 1)
        fits = (
            "yes" if not after["refused"] and after["total_bytes"] <= after["hbm_bytes"] else "NO"
        )
        before_total = "-"
        if before:
            before_total = (">= " if before["refused"] else "") + f"{before['total_bytes'] / g:.2f}"
        print(
            f"| {i} | {after['model']} | {after['topology']} | {mesh} | {after['step']} | "
            f"{after['batch']} x {after['length']} | {after['remat']} | {after['method']} | "
            f"{after.get('attention', 'xla')} | {before_total} | "
            f"{'>= ' if after['refused'] else ''}{after['total_bytes'] / g:.2f} | "
            f"{after['temporaries_bytes'] / g:.2f} | {after['floor_bytes'] / g:.2f} | "
            f"{after['total_bytes'] / after['floor_bytes']:.2f} | "
            f"{after['hbm_bytes'] / g:.2f} | {fits} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
