"""The benchmark scripts run (tiny sizes) and their memory probe sees allocations."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.bench import train_step
from experiments.bench.memory import PeakSampler, release_free_heap, rss_mb
from prefix_jax.models import ModelConfig

REPO = Path(__file__).resolve().parents[1]


def test_peak_sampler_sees_a_transient_allocation():
    release_free_heap()
    before = rss_mb()
    with PeakSampler() as sampler:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        del block
    assert sampler.peak - before > 150
    release_free_heap()
    assert rss_mb() - before < 100  # freed and returned: only the peak saw it


def test_step_flops_count_methods():
    c = ModelConfig(
        family="llama",
        vocab_size=100,
        hidden_size=8,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        intermediate_size=16,
        max_position_embeddings=32,
    )
    prefix = train_step.step_flops(c, "prefix-mlp", batch=1, length=4)
    full = train_step.step_flops(c, "full", batch=1, length=4)
    # tokens * (layers * (q, o: 8x8; k, v: 8x4; gate, up, down: 8x16) + unembed 8x100)
    matmuls = 2 * 4 * (2 * 8 * (2 * 8 + 2 * 4 + 3 * 16) + 8 * 100)
    attention = 4 * 4 * 8 * 2  # per key: tokens * heads*head_dim * layers, scores and values
    assert prefix == 2 * (matmuls + attention * (4 + train_step.P))  # keys: prefix + tokens
    assert full == 3 * (matmuls + attention * 4)  # weight gradients: a third matmul pass


@pytest.mark.slow  # a benchmark smoke run (tens of seconds): -m slow
@pytest.mark.slow  # a benchmark smoke run (about 80 s on the 2-core CI machine): -m slow
def test_accelerator_script_runs_quick_on_cpu():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.bench.gpu", "--quick", "--repeats", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    for method in ("prefix-mlp", "lora", "full"):
        assert any(line.startswith(f"| {method} |") for line in lines), out.stdout
    assert sum(line.startswith("| greedy |") or line.startswith("| beam5 |") for line in lines) == 2
    assert any(line.startswith("| 200 |") for line in lines)
    parity = next(line for line in lines if line.startswith("0. parity"))
    assert float(parity.split("=")[-1]) < 5e-2, parity  # bf16 vs float32 logits


@pytest.mark.slow  # a benchmark smoke run (tens of seconds): -m slow
def test_attention_benchmark_runs_quick_on_cpu():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.bench.attention", "--quick", "--repeats", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| tiny |")]
    assert {row[4].strip() for row in rows} == {"xla", "flash"}, out.stdout
    for row in rows:  # every kernel ran, and its logits equal the dense kernel's
        assert float(row[-2]) < 1e-4, row
    assert sum(line.startswith("| flash |") for line in out.stdout.splitlines()) == 1


def test_random_checkpoint_has_smollm2_shapes(smollm2):
    import transformers

    from experiments.bench.random_checkpoint import SMOLLM2_135M
    from prefix_jax.models.config import config_from_hf

    hf_config = transformers.LlamaConfig(**SMOLLM2_135M).to_dict()
    random_config = config_from_hf(hf_config, name="random")
    real, _ = smollm2
    assert real.config.norm_eps == pytest.approx(random_config.norm_eps)  # GGUF: float32
    same_eps = dataclasses.replace(real.config, name="random", norm_eps=random_config.norm_eps)
    assert random_config == same_eps


def test_serving_benchmarks_parse_their_arguments():
    """The serving benchmark and soak import without a model, keep their documented defaults
    and refuse bad sizes (their runs are minutes long: experiments, not tests)."""
    from experiments.bench import serving, serving_soak

    args = serving.parse([])
    assert (args.per_task, args.max_tokens, args.slots) == (8, 32, 8)
    assert args.rates == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert serving.parse(["--per-task", "1", "--lone", "6"]).lone == 3  # at most 3 requests
    soak = serving_soak.parse([])
    assert (soak.requests, soak.disconnect, soak.bad, soak.rss_from) == (2000, 0.1, 0.05, 200)
    for bad in (["--rates", "0"], ["--slots", "0"]):
        with pytest.raises(SystemExit):
            serving.parse(bad)
    for bad in (["--disconnect", "0.9", "--bad", "0.2"], ["--requests", "100"]):
        with pytest.raises(SystemExit):
            serving_soak.parse(bad)


def test_serving_flags_fit_the_longest_prompt_and_arrivals_follow_the_rate():
    from experiments.bench import serving

    flags = serving.server_flags(longest=70, max_tokens=32, slots=4, waiting=100)
    buckets = flags[flags.index("--buckets") + 1 : flags.index("--prefix-capacity")]
    assert buckets == ["16", "32", "64", "128"]
    assert flags[flags.index("--max-len") + 1] == str(20 + 128 + 32)  # p=20 + bucket + new
    assert flags[flags.index("--max-waiting") + 1] == "100"
    arrivals = serving.poisson_arrivals(4000, rate=2.0, seed=0)
    assert np.all(np.diff(arrivals) > 0)
    assert arrivals[-1] / 4000 == pytest.approx(0.5, rel=0.05)  # mean gap 1 / rate
