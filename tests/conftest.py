"""Shared fixtures: tiny random HF checkpoints written with `save_pretrained`, and SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

# libtpu (the TPU compiler of the AOT tests) takes a machine-wide lock by default; these
# processes only compile, so the tests and their worker processes may load it side by side.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Eight simulated CPU devices for the mesh tests; unsharded code runs on device 0 as usual.
jax.config.update("jax_num_cpu_devices", 8)

SHARED_DATA = Path(os.environ.get("PREFIX_JAX_DATA", Path(__file__).parents[1] / "../shared/data"))


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
    qwen3, mistral_window."""
    root = tmp_path_factory.mktemp("tiny")
    kinds = ("gpt2", "llama", "llama_tied", "llama3_rope", "qwen2", "qwen3", "mistral_window")
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
