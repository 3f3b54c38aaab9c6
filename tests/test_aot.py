"""Memory per device is a tested property: AOT compiles on 8 simulated CPU devices and on a
TPU topology through libtpu's compiler (no TPU needed)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from prefix_jax.models.catalog import CATALOG, model_config
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.scale import aot, sharding
from prefix_jax.scale.aot.table import method_config

REPO = Path(__file__).parents[1]
FSDP = '(("data",1),("fsdp",-1),("tensor",1))'

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices (conftest sets jax_num_cpu_devices=8)"
)

# Deep and wide enough that a step's activations, not its weights, dominate its memory.
TINY = ModelConfig(
    family="llama",
    vocab_size=512,
    hidden_size=128,
    num_layers=8,
    num_heads=8,
    num_kv_heads=4,
    head_dim=16,
    intermediate_size=256,
    max_position_embeddings=512,
    tie_embeddings=False,
)
BATCH, LENGTH = 32, 128


def cpu_mesh(fsdp: int):
    return sharding.make_mesh(
        [("data", 1), ("fsdp", fsdp), ("tensor", 1)], jax.devices("cpu")[:fsdp]
    )


def train_temporaries(fsdp: int, method: str, remat: str | None) -> int:
    top_layers = int(method[3:]) if method.startswith("top") else 0
    fit = aot.compile_train_step(
        TINY,
        cpu_mesh(fsdp),
        BATCH,
        LENGTH,
        method_config("full" if top_layers else method, 8, top_layers=top_layers),
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        remat_policy=remat,
    )
    return fit.memory.temporaries


@pytest.mark.parametrize(
    "method,remat",
    [
        ("prefix", None),
        ("prefix", "full"),
        pytest.param("prompt", None, marks=pytest.mark.slow),  # the prefix's path, p longer
        ("lora", None),
        ("full", None),
        pytest.param("top2", None, marks=pytest.mark.slow),  # full's path on 2 layers
    ],
)
def test_fsdp_8_train_step_needs_a_quarter_of_the_temporaries(method, remat):
    """Activations split by row: FSDP 8 holds ~1/8 of one device's temporaries (measured
    0.11-0.13; without the activation constraints the compiler kept 0.30-0.40)."""
    one, eight = train_temporaries(1, method, remat), train_temporaries(8, method, remat)
    assert eight <= one / 4, f"{method}/{remat}: {eight / one:.3f} of the 1-device temporaries"


def test_fsdp_gathers_one_layer_at_a_time_and_never_activations():
    """The only float all-gathers of the FSDP 8 step are single layers' weights, the
    vocabulary projection and the prefix's keys/values once computed (p rows, split over
    fsdp by width): no stacked weights of all layers, no rows of other devices."""
    from flax import nnx

    from prefix_jax.train.step import OptimConfig, Trainer, make_optimizer

    mesh = cpu_mesh(8)
    lm, trainable = aot.abstract_method_model(
        TINY, method_config("prefix", 8), mesh=mesh, param_dtype=jnp.float32,
        dtype=jnp.float32,
    )  # fmt: skip
    trainer = Trainer(lm, make_optimizer(OptimConfig(), trainable), trainable, mesh=mesh)
    hlo = trainer.lower_step(aot.abstract_batch(BATCH, LENGTH, mesh)).compile().as_text()
    gathered = {
        tuple(int(n) for n in dims.split(",") if n)
        for dims in re.findall(r"= f32\[([\d,]*)\][^=]*? all-gather\(", hlo)
    }
    per_layer = {tuple(v.shape[1:]) for v in jax.tree.leaves(nnx.state(lm.base.layers))}
    vocab = {(TINY.vocab_size, TINY.hidden_size), (TINY.hidden_size, TINY.vocab_size)}
    norms = {(TINY.hidden_size,)}
    prefix = {(TINY.num_layers, 1, 8, TINY.num_kv_heads, TINY.head_dim)}
    assert gathered, "FSDP must gather weights somewhere"
    allowed = per_layer | vocab | norms | prefix
    assert gathered <= allowed, gathered - allowed


def test_fsdp_8_decode_step_needs_a_quarter_of_the_memory():
    one = aot.compile_decode_step(TINY, cpu_mesh(1), BATCH, 256, param_dtype=jnp.float32)
    eight = aot.compile_decode_step(TINY, cpu_mesh(8), BATCH, 256, param_dtype=jnp.float32)
    assert eight.memory.temporaries <= one.memory.temporaries / 4
    # The cache is an argument; split by row it shrinks with the weights.
    assert eight.memory.arguments <= one.memory.arguments / 4


def test_public_shapes_have_the_published_sizes():
    # Parameter counts of the released checkpoints (their safetensors index metadata).
    assert model_config("llama-3-8b").num_params() == 8_030_261_248
    assert model_config("Llama-3-70B").num_params() == 70_553_706_496
    assert model_config("smollm2-135m").num_params() == 134_515_008
    assert model_config("gemma-2-2b").num_params() == 2_614_341_888  # 4 norms per layer
    assert model_config("gemma-3-1b").num_params() == 999_885_952  # and q/k norms


def test_gemma_steps_compile_with_per_layer_windows():
    """Gemma 2's switches (local/global layers as a traced window per layer, soft-caps,
    post-norms) through the AOT path: abstract model, train and decode steps on 2 devices."""
    gemma = dataclasses.replace(
        model_config("gemma-2-2b"),
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        sliding_window=16,
        layer_types=("sliding_attention", "full_attention") * 2,
    )
    train = aot.compile_train_step(gemma, cpu_mesh(2), 4, 64, method_config("prefix", 4))
    assert gemma.num_params() * 2 / 2 <= train.memory.arguments  # bf16 weights, FSDP 2
    decode = aot.compile_decode_step(gemma, cpu_mesh(2), 4, 64)
    assert decode.memory.arguments > 0
    assert aot.train_floor(gemma, {"fsdp": 2}, 4, 64, trainable_state_bytes=0)["logits"] > 0


def test_model_config_reads_a_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CATALOG["llama-3-8b"].config))
    assert model_config(str(tmp_path)) == model_config(str(tmp_path / "config.json"))
    assert model_config(str(tmp_path)).hidden_size == 4096
    with pytest.raises(FileNotFoundError, match="neither a known architecture"):
        model_config("llama-9-1t")


def test_topology_errors():
    with pytest.raises(ValueError, match="unknown topology 'v9x-8'"):
        aot.topology("v9x-8")
    with pytest.raises(ValueError, match="needs 64 CPU devices but this process has 8"):
        aot.devices(aot.topology("cpu-64"))
    assert aot.topology("v5p-256").chips == 128  # v5p names count TensorCores


def test_floor_terms_for_llama_3_8b_on_v5e_256():
    c = model_config("llama-3-8b")
    floor = aot.train_floor(c, {"fsdp": 256}, 256, 2048, trainable_state_bytes=0, prefix_length=10)
    assert floor["saved layer inputs"] == 32 * 2048 * 4096 * 2  # one row per chip, bf16
    assert floor["logits"] == 2048 * 128256 * 4
    assert floor["attention scores"] == 32 * 2048 * 2058 * 4
    assert floor["largest weight gathered"] == 128256 * 4096 * 2


needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu (the TPU compiler) is not installed: pip install -e '.[tpu]'",
)


@needs_libtpu
def test_train_step_compiles_for_a_tpu_v5e_topology():
    topo = aot.topology("v5e-4")
    mesh = sharding.make_mesh([("data", 1), ("fsdp", 4), ("tensor", 1)], aot.devices(topo))
    assert mesh.devices.flat[0].platform == "tpu"
    fit = aot.compile_train_step(TINY, mesh, 16, 128, method_config("prefix", 8))
    weights_shard = TINY.num_params() * 2 / 4  # bf16, FSDP 4
    assert weights_shard <= fit.memory.arguments < topo.hbm_bytes
    # XLA counts the layer scan's body once: its FLOPs are below the analytic step's share.
    analytic = aot.train_flops(TINY, method_config("prefix", 8), 16, 128) / 4
    assert analytic / TINY.num_layers < fit.memory.flops < analytic


@needs_libtpu
def test_splash_attention_compiles_for_tpu_and_needs_less_than_dense():
    """On a TPU topology `auto` is splash: its Pallas kernel is in the compiled step, and at
    2 x 2048 tokens per chip with p=64 the step's temporaries are a fraction of dense's."""
    from prefix_jax.train.step import OptimConfig, Trainer, make_optimizer

    mesh = sharding.make_mesh(
        [("data", 1), ("fsdp", 4), ("tensor", 1)], aot.devices(aot.topology("v5e-4"))
    )
    settings = method_config("prefix", 64)
    lm, trainable = aot.abstract_method_model(TINY, settings, mesh=mesh)
    trainer = Trainer(lm, make_optimizer(OptimConfig(), trainable), trainable, mesh=mesh)
    assert "tpu_custom_call" in trainer.lower_step(aot.abstract_batch(8, 2048, mesh)).as_text()
    temps = {
        kind: aot.compile_train_step(TINY, mesh, 8, 2048, settings, attention=kind).temporaries
        for kind in ("auto", "xla")
    }
    assert temps["auto"] <= temps["xla"] / 3, temps


@needs_libtpu
def test_a_step_too_large_for_the_chip_is_reported_not_raised():
    mesh = sharding.make_mesh(
        [("data", 1), ("fsdp", 4), ("tensor", 1)], aot.devices(aot.topology("v5e-4"))
    )
    fit = aot.compile_train_step(TINY, mesh, 4096, 2048, method_config("prefix", 8))
    assert fit.memory is None
    assert fit.total > aot.topology("v5e-4").hbm_bytes


def test_cli_prints_train_and_decode_rows(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({**CATALOG["smollm2-135m"].config, "num_hidden_layers": 2})
    )
    out = tmp_path / "fit.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "prefix_jax.cli", "aot", "--config", str(REPO / "configs/e2e.py")]
        + [f"--config.model={tmp_path / 'config.json'}", "--config.batch_size=8"]
        + ["--config.remat=full", f"--config.mesh={FSDP}"]
        + ["--topology", "cpu-4", "--seq", "32", "--decode-batch", "8"]
        + ["--cache-length", "32", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| train | prefix | 8 x 32 | full |" in done.stdout
    assert "| decode | prefix | 8 x 32 |" in done.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["step"] for r in records] == ["train", "decode"]
    assert all(r["total_bytes"] > 0 and r["mesh"]["fsdp"] == 4 for r in records)


# An encoder-decoder deep and wide enough for activations to matter (T5 layout).
TINY_T5 = Seq2SeqConfig(
    family="t5",
    vocab_size=512,
    hidden_size=128,
    num_encoder_layers=4,
    num_decoder_layers=4,
    num_heads=8,
    head_dim=16,
    intermediate_size=256,
    positions="relative",
    norm="rms",
    post_norm=False,
    final_norm=True,
    scale_attention=False,
    activation="gelu_tanh",
    gated_mlp=True,
    bias=False,
    tie_embeddings=False,
)


def test_encoder_decoder_train_step_splits_over_fsdp_8():
    """Li & Liang's three prefixes on an encoder-decoder: FSDP 8 holds a fraction of one
    device's temporaries (measured 0.13) and of the prefix MLPs' training state (their last
    layers split over fsdp), and the analytic floor stays below the total."""
    settings = method_config("prefix", 8)
    fits = {
        n: aot.compile_train_step(
            TINY_T5,
            cpu_mesh(n),
            BATCH,
            LENGTH,
            settings,
            param_dtype=jnp.float32,
            dtype=jnp.float32,
            target_length=32,
        )  # fmt: skip
        for n in (1, 8)
    }
    assert fits[8].memory.temporaries <= fits[1].memory.temporaries / 4
    assert fits[8].trainable_state_bytes <= fits[1].trainable_state_bytes / 4
    floor = aot.train_floor(
        TINY_T5, {"fsdp": 8}, BATCH, LENGTH, target_length=32,
        trainable_state_bytes=fits[8].trainable_state_bytes, prefix_length=8, dtype_bytes=4,
        dense_attention=False,
    )  # fmt: skip
    assert sum(floor.values()) <= fits[8].total


def test_encoder_decoder_decode_step_splits_both_caches_over_fsdp_8():
    """One cached decoding step of an encoder-decoder (the self-attention cache after the
    decoder prefix, and the cross keys/values of the cross prefix and the encoded sources):
    under FSDP 8 the weights and both caches are split, and the analytic floor stays below
    what XLA reports."""
    fits = {
        n: aot.compile_decode_step(
            TINY_T5,
            cpu_mesh(n),
            BATCH,
            256,
            source_length=LENGTH,
            prefix_length=8,
            param_dtype=jnp.float32,
            dtype=jnp.float32,
        )  # fmt: skip
        for n in (1, 8)
    }
    assert fits[8].memory.arguments <= fits[1].memory.arguments / 6
    assert fits[8].memory.temporaries <= fits[1].memory.temporaries / 4
    for n, fit in fits.items():
        floor = aot.decode_floor(
            TINY_T5, {"fsdp": n}, BATCH, 256, source_length=LENGTH, prefix_length=8, dtype_bytes=4
        )
        assert floor["cache shard"] + floor["weights shard"] <= fit.memory.arguments
        assert sum(floor.values()) <= fit.total


def test_encoder_decoder_full_fine_tuning_counts_weight_gradients():
    frozen = aot.train_flops(TINY_T5, method_config("prefix", 0), BATCH, LENGTH, target_length=32)
    full = aot.train_flops(TINY_T5, method_config("full", 0), BATCH, LENGTH, target_length=32)
    assert full == 1.5 * frozen


def test_encoder_decoder_decode_needs_its_source_length():
    with pytest.raises(ValueError, match="needs source_length"):
        aot.decode_floor(TINY_T5, {"fsdp": 1}, 4, 8)
    with pytest.raises(ValueError, match="needs source_length"):
        aot.decode_flops(TINY_T5, 4, 8)
    with pytest.raises(ValueError, match="needs source_length"):
        aot.compile_decode_step(TINY_T5, cpu_mesh(1), 4, 8)


def test_encoder_decoder_public_shapes():
    # transformers' num_parameters() of facebook/bart-large and google-t5/t5-base; ours also
    # counts BART's final_logits_bias (a buffer there, one per vocabulary entry).
    assert model_config("bart-large").num_params() == 406_291_456 + 50_265
    assert model_config("t5-base").num_params() == 222_903_552


@needs_libtpu
def test_encoder_decoder_train_step_compiles_for_a_tpu_v5e_topology():
    topo = aot.topology("v5e-4")
    mesh = sharding.make_mesh([("data", 1), ("fsdp", 4), ("tensor", 1)], aot.devices(topo))
    fit = aot.compile_train_step(
        TINY_T5, mesh, 16, 128, method_config("prefix", 8), target_length=32
    )
    assert TINY_T5.num_params() * 2 / 4 <= fit.memory.arguments < topo.hbm_bytes


# The serving engine's generate step. On a TPU, head_dim 128: a narrower head is padded
# to the chip's 128 lanes, and the step's temporaries then hold a relaid copy of the
# cache (8x the cache at head_dim 16), which real models never see.
SERVE = dict(prefix_capacity=4, prefix_max_length=8)
TINY_SERVE = dataclasses.replace(TINY, hidden_size=256, num_layers=4, num_heads=4, head_dim=128)


def test_aot_generate_step_is_the_engine_program_with_its_layouts():
    """A sharded engine's compiled generate step (concrete weights, cache and host arrays)
    and the AOT one (shapes laid out as the engine lays them out) take the same arguments
    in the same layouts: the compiler's accounts agree to the byte."""
    from flax import nnx

    from prefix_jax.models.transformer import Transformer
    from prefix_jax.serve.programs import Programs

    mesh = sharding.make_mesh([("data", 2), ("fsdp", 1), ("tensor", 2)], jax.devices()[:4])
    model = Transformer(
        TINY, rngs=nnx.Rngs(0), param_dtype=jnp.float32, dtype=jnp.float32,
        activation_sharding=sharding.ActivationSharding(mesh),
    )  # fmt: skip
    state = nnx.state(model)
    nnx.update(
        model, jax.device_put(state, sharding.state_shardings(state, sharding.DEFAULT_RULES, mesh))
    )
    engine = Programs(
        model, slots=8, max_len=64, buckets=(16,), beam_sizes=(), banned_ids=(), eos_id=None,
        mesh=mesh, **SERVE,
    )  # fmt: skip
    served = aot.compile_generate_step(
        TINY, mesh, 8, 64, param_dtype=jnp.float32, dtype=jnp.float32, **SERVE
    )
    real = engine._generate.memory_analysis()
    fields = ("argument", "output", "alias", "temp")
    measured = {f: getattr(real, f"{f}_size_in_bytes") for f in fields}
    m = served.fit.memory
    assert {f: getattr(m, f) for f in ("arguments", "outputs", "aliased", "temporaries")} == {
        "arguments": measured["argument"],
        "outputs": measured["output"],
        "aliased": measured["alias"],
        "temporaries": measured["temp"],
    }
    assert served.cache_bytes == sum(
        x.addressable_shards[0].data.nbytes for x in (engine.cache.keys, engine.cache.values)
    )
    assert served.table_bytes == sum(
        x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(engine.table)
    )


@needs_libtpu
def test_generate_step_on_tpu_splits_cache_and_table_over_kv_heads():
    """The engine's generate step compiled for v5e-4 (32 slots of 256 tokens: the cache
    leads): tensor parallelism over 4 kv heads divides the per-chip cache and prefix table
    by 4, and each total (step plus resident table) lies between the analytic floor and
    1.3x it (measured 1.04 on one chip, 1.15 on four)."""
    devices = aot.devices(aot.topology("v5e-4"))
    fits = {}
    for t in (1, 4):
        mesh = sharding.make_mesh([("data", 1), ("fsdp", 1), ("tensor", t)], devices[:t])
        fits[t] = aot.compile_generate_step(TINY_SERVE, mesh, 32, 256, **SERVE)
    assert fits[4].cache_bytes * 4 == fits[1].cache_bytes
    assert fits[4].table_bytes * 4 <= fits[1].table_bytes + 64  # lengths/flags replicated
    assert fits[4].fit.memory.arguments <= fits[1].fit.memory.arguments / 3
    for t, served in fits.items():
        floor = sum(aot.generate_floor(TINY_SERVE, {"tensor": t}, 32, 256, **SERVE).values())
        assert served.fit.memory.arguments >= served.cache_bytes + served.weights_bytes
        assert floor <= served.total <= 1.3 * floor, (t, served.total / floor)


def test_serve_table_prints_generate_rows(tmp_path, capsys):
    """`prefix-jax aot --serve-slots` rows, in this process on 4 CPU devices (tensor 2 over
    2 kv heads, slots over data 2): per-chip cache = the whole cache / 4."""
    from prefix_jax.cli.aot import main
    from prefix_jax.scale.aot.table import serve_table

    shape = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps({**CATALOG["smollm2-135m"].config, **shape}))
    config = method_config("prefix")
    config.model = str(tmp_path / "config.json")
    config.mesh = (("data", 2), ("fsdp", 1), ("tensor", 2))
    out = tmp_path / "serve.jsonl"
    serve_table(config, "cpu-4", [4, 8], max_len=32, prefix_max_length=8, json_path=out)
    printed = capsys.readouterr().out
    assert "| generate | 4 x 32 |" in printed and "| generate | 8 x 32 |" in printed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    head_dim = 576 // 4
    for r in records:
        whole = 2 * 2 * r["slots"] * 32 * 2 * head_dim * 4  # k+v, layers, f32
        assert r["cache_bytes"] * 4 == whole
        assert r["arguments_bytes"] >= r["cache_bytes"] + r["weights_bytes"]
        assert r["floor_bytes"] <= r["total_bytes"]
    with pytest.raises(SystemExit):
        main(["--config", str(REPO / "configs/e2e.py"), "--topology", "cpu-4"]
             + ["--serve-slots", "4", "--decode-batch", "8"])  # fmt: skip
    assert "--serve-slots compiles the serving step alone" in capsys.readouterr().err
