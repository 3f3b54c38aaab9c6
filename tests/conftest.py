"""Shared fixtures: tiny random HF checkpoints written with `save_pretrained`, and SmolLM2."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# libtpu (the TPU compiler of the AOT tests) takes a machine-wide lock by default; these
# processes only compile, so the tests and their worker processes may load it side by side.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _fast_cpu_compiles() -> None:
    """Two-thirds of the suite's time is XLA compiling tiny CPU programs, most of it LLVM
    optimising code that then runs for milliseconds. Tests compile without those passes,
    and every process of one run (xdist workers, the CLI and multi-host subprocesses, which
    inherit the environment) shares one persistent compilation cache, so a program that
    several tests build is compiled once. Both only change how fast programs are built:
    the cache returns the executable its key's HLO and flags would give. The run's
    processes also share prefix_jax's own cache (a GGUF's converted tokenizer). Both
    caches are new per run (made by the first process, removed when it exits), so a run
    measures a cold machine."""
    flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    if "PREFIX_JAX_TEST_CACHE" not in os.environ:
        cache = tempfile.mkdtemp(prefix="prefix_jax_test_cache_")
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        os.environ["PREFIX_JAX_TEST_CACHE"] = cache
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(cache, "xla")
        os.environ["PREFIX_JAX_CACHE"] = cache  # GGUF tokenizers (models.tokenizer_cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


_fast_cpu_compiles()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Eight simulated CPU devices for the mesh tests; unsharded code runs on device 0 as usual.
jax.config.update("jax_num_cpu_devices", 8)

SHARED_DATA = Path(os.environ.get("PREFIX_JAX_DATA", Path(__file__).parents[1] / "../shared/data"))


def _tiny_gemma(kind: str):
    """Gemma 2 / Gemma 3 (text) with a window of 4 tokens, shorter than the tests' rows,
    head_dim and query_pre_attn_scalar both unlike hidden / heads, soft-caps small enough
    that a missing cap shows, and random (1 + w) norm weights. Gemma 3's local and global
    layers have different RoPE bases, the global ones with linear scaling."""
    import torch
    import transformers

    common = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=4,
        max_position_embeddings=128,
        final_logit_softcapping=3.0,
        initializer_range=0.3,  # scores and logits large enough for the caps to bite
    )
    if kind == "gemma2":
        config = transformers.Gemma2Config(**common, attn_logit_softcapping=2.0)
        model = transformers.Gemma2ForCausalLM(config)
    else:
        config = transformers.Gemma3TextConfig(
            **common,
            layer_types=["sliding_attention"] * 2 + ["full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0},
            },
        )
        model = transformers.Gemma3ForCausalLM(config)
    with torch.no_grad():  # random norm weights (HF form: the norm scales by 1 + w)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.3 * torch.randn_like(p))
    return model


def _save_tiny(tmp_dir: Path, kind: str) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "qwen2":
        config = transformers.Qwen2Config(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        model = transformers.Qwen2ForCausalLM(config)
        with torch.no_grad():  # random biases, so a missing bias cannot pass unnoticed
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.copy_(0.1 * torch.randn_like(p))
    elif kind == "qwen3":  # q/k RMSNorm, head_dim not hidden / heads
        config = transformers.Qwen3Config(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=64,
            tie_word_embeddings=True,
        )
        model = transformers.Qwen3ForCausalLM(config)
        with torch.no_grad():  # random norms (q/k included): a missing one cannot pass
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
    elif kind == "mistral_window":  # sliding window of 4 tokens, shorter than the tests' rows
        config = transformers.MistralConfig(
            vocab_size=101,
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=128,
            sliding_window=4,
            tie_word_embeddings=False,
        )
        model = transformers.MistralForCausalLM(config)
    elif kind in ("gemma2", "gemma3"):
        model = _tiny_gemma(kind)
    elif kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=None
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=101,
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rope_theta=5000.0,
            tie_word_embeddings=kind == "llama_tied",
        )
        if kind == "llama3_rope":  # Llama 3.1 frequency scaling
            config.rope_parameters = {
                "rope_type": "llama3",
                "rope_theta": 5000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        model = transformers.LlamaForCausalLM(config)
        # Random norms so a wrong norm mapping cannot hide behind all-ones weights.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
    path = tmp_dir / kind
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints: gpt2, llama (GQA, untied), llama_tied, llama3_rope, qwen2,
    qwen3, mistral_window, gemma2, gemma3 (text)."""
    root = tmp_path_factory.mktemp("tiny")
    kinds = ("gpt2", "llama", "llama_tied", "llama3_rope", "qwen2", "qwen3", "mistral_window")
    kinds += ("gemma2", "gemma3")
    return {kind: _save_tiny(root, kind) for kind in kinds}


@pytest.fixture(scope="session")
def smollm2():
    """Our SmolLM2 model and tokenizer, loaded once per test session."""
    from prefix_jax.models import load

    return load("smollm2")


def padded_batch(rng: np.random.Generator, vocab: int, lengths: list[int], side: str):
    """Random tokens with a mask padded on `side`, padding filled with token 0."""
    width = max(lengths)
    tokens = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for i, n in enumerate(lengths):
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        tokens[i, sl] = rng.integers(1, vocab, n)
        mask[i, sl] = 1
    return tokens, mask


@pytest.fixture(scope="session")
def smollm2_hf(smollm2):
    """transformers' float32 SmolLM2 from the same GGUF file (the reference)."""
    import torch
    import transformers

    from prefix_jax.models import resolve

    path = resolve("smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def hf_logits(hf_model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reference logits with positions counted from each row's first real token."""
    import torch

    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        )
    return out.logits.float().numpy()


def word_tokenizer(words: list[str], template: str):
    """A real HF fast tokenizer over whitespace-split `words` (ids: `<pad>` 0, `</s>` 1,
    `<s>` 2, `<unk>` 3, then `words`) that wraps each text as `template` says, e.g.
    "<s> $A </s>" (BART) or "$A </s>" (T5): for encoder-decoder data tests, no hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", 2), ("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
    )


def _randomize_seq2seq(model) -> None:
    """Random norms, biases and logit bias, so that a wrong mapping cannot hide."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias") and "relative_attention_bias" not in name:
                p.copy_(0.1 * torch.randn_like(p))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(0.1 * torch.randn_like(model.final_logits_bias))


def _save_tiny_seq2seq(tmp_dir: Path, kind: str) -> Path:
    import json

    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    if kind == "bart":
        config = transformers.BartConfig(
            vocab_size=61,
            d_model=32,
            encoder_layers=2,
            decoder_layers=3,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=48,
            decoder_ffn_dim=48,
            max_position_embeddings=40,
            scale_embedding=True,
        )
        model = transformers.BartForConditionalGeneration(config)
    else:  # t5_v1: ReLU, tied head (rescaled); t5_v11: gated GELU, untied head
        config = transformers.T5Config(
            vocab_size=61,
            d_model=32,
            d_kv=16,
            d_ff=48,
            num_layers=2,
            num_decoder_layers=3,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=20,
            feed_forward_proj="relu" if kind == "t5_v1" else "gated-gelu",
            decoder_start_token_id=0,
        )
        model = transformers.T5ForConditionalGeneration(config)
    _randomize_seq2seq(model)
    path = tmp_dir / kind
    model.save_pretrained(path)
    if kind == "t5_v11":
        # Hub layout of T5 v1.1 / Flan-T5: its own lm_head and tie_word_embeddings=false
        # (transformers 5 always ties on save, so write that layout by hand).
        tensors = load_file(path / "model.safetensors")
        tensors["lm_head.weight"] = torch.randn(61, 32)
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        hf = json.loads((path / "config.json").read_text())
        hf["tie_word_embeddings"] = False
        hf.pop("scale_decoder_outputs", None)
        (path / "config.json").write_text(json.dumps(hf))
    return path


@pytest.fixture(scope="session")
def tiny_seq2seq_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random encoder-decoders: bart (scaled embeddings), t5_v1 (ReLU, tied, rescaled
    head) and t5_v11 (gated GELU, untied head, as Flan-T5)."""
    root = tmp_path_factory.mktemp("tiny_seq2seq")
    return {kind: _save_tiny_seq2seq(root, kind) for kind in ("bart", "t5_v1", "t5_v11")}


def seq2seq_batch(seed=0, vocab=61):
    """Right-padded sources (lengths 11, 5, 8: T5's long-distance buckets are reached) and
    targets."""
    rng = np.random.default_rng(seed)
    src, src_mask = padded_batch(rng, vocab, [11, 5, 8], "right")
    tgt, tgt_mask = padded_batch(rng, vocab, [7, 3, 5], "right")
    return src, src_mask, tgt, tgt_mask


def seq2seq_hf_logits(hf, src, src_mask, tgt, tgt_mask, **kwargs) -> np.ndarray:
    """transformers' (or PEFT's) teacher-forced logits of an encoder-decoder."""
    import torch

    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(src),
            attention_mask=torch.from_numpy(src_mask),
            decoder_input_ids=torch.from_numpy(tgt),
            decoder_attention_mask=torch.from_numpy(tgt_mask),
            **kwargs,
        )
    return out.logits.float().numpy()


def byte_level_vocab() -> dict[str, int]:
    """GPT-2's byte -> printable character map, as vocab {character: byte value}."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return {c: b for b, c in chars.items()}


def byte_tokenizer():
    """Byte-level tokenizer with no merges: token id = UTF-8 byte value, plus `<eos>` = 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(models.BPE(vocab=byte_level_vocab(), merges=[]))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    model.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=model, eos_token="<eos>")


# The tiny training run of tests/test_train.py (also test_methods.py, test_multihost.py):
# a tiny random Llama (vocab 257 = bytes + eos) with the byte tokenizer and a 26-line jsonl
# task; 4 held-out sources leave 22 training examples.
MAX_STEPS = 12
NAMES = "Aromi Bibimbap Cotto Zizzi Wildwood Fitz Giraffe Loch Mill Punter Strada Vaults Eagle"
FOODS = ("Thai", "French")

# The run's settings, shared by the in-process runs and the CLI (as --config.KEY=VALUE).
OVERRIDES = {
    "mesh": (),  # one device, no mesh (meshes: tests/test_sharding.py, test_multihost.py)
    "data.task": "jsonl",
    "data.eval_sources": 4,
    "data.max_source_tokens": 40,
    "data.max_target_tokens": 32,
    "data.buckets": (48, 96),
    "batch_size": 4,
    "max_steps": MAX_STEPS,
    "checkpoint_every": 3,
    "log_every": 2,
    "prefix.length": 3,
    "prefix.hidden": 16,
    "prefix.dropout": 0.1,
    "optim.learning_rate": 0.01,
    "optim.warmup_steps": 2,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama with the byte tokenizer in one HF directory, and a jsonl task file."""
    import json

    import torch
    import transformers

    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=257,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=256,
        eos_token_id=256,
    )
    model_dir = root / "tiny_llama"
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)

    names = NAMES.split()
    data = root / "e2e_like.jsonl"
    with data.open("w") as f:
        for i in range(26):  # 13 names x 2 foods: 26 distinct sources
            name, food = names[i % 13], FOODS[i % 2]
            source, target = f"name : {name} | food : {food}", f"{name} serves {food} food."
            f.write(json.dumps({"source": source, "target": target}) + "\n")
    return {"model": model_dir, "data": data, "root": root}


def make_config(tiny: dict[str, Path], **overrides):
    """`configs/e2e.py:local` with OVERRIDES, then `overrides` ("a__b" for a.b)."""
    from prefix_jax.config.parse import load_config

    config = load_config(f"{Path(__file__).parents[1] / 'configs' / 'e2e.py'}:local")
    settings = {**OVERRIDES, "model": str(tiny["model"]), "data.path": str(tiny["data"])}
    settings |= {key.replace("__", "."): value for key, value in overrides.items()}
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def random_prefix(model, length: int, seed: int, after: bool = False, separator=None):
    """An exported prefix of `length` random normal slots for `model` (`after`: PEFT's
    position convention; `separator`: the one its training config records)."""
    from prefix_jax.methods.prefix.artifact import ExportedPrefix
    from prefix_jax.models import model_identity

    c = model.config
    table = np.random.default_rng(seed).normal(size=(length, 2 * c.num_layers * c.kv_dim))
    training = {} if separator is None else {"config": {"data": {"separator": separator}}}
    return ExportedPrefix(
        table=table.astype(np.float32),
        num_layers=c.num_layers,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        positions_after_prefix=after,
        model=model_identity(model),
        training=training,
    )


BYTE_EOS = 256  # byte_tokenizer's <eos>


def save_tiny_byte_llama(path: Path, tokenizer) -> Path:
    """A tiny random Llama (vocab 260 >= the byte tokenizer's 257) and `tokenizer` in one
    directory: what the serving tests load, in process or in a server."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=260,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=BYTE_EOS,
        eos_token_id=BYTE_EOS,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
