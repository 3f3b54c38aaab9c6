"""LN-tuning (Qi et al., 2022; PEFT's `LNTuningConfig`): only the norms' scales and biases train.

Like PEFT, which trains a copy of each targeted norm module, `LNTuning` holds trainable
copies (`LNParam`) of the targeted norm weights and leaves the base model's own untouched:
the base is frozen and never donated, so one loaded model serves the tuned and the untuned
run. The forward pass runs the base with the copies in place of its norm weights
(`LNTuningLM.tuned`, a view built when traced: no weights are copied per step).

A norm is named as in our models without its `_scale` / `_bias` suffix: `attn_norm`,
`mlp_norm`, `final_norm`, and where the model has them `attn_post_norm`, `mlp_post_norm`,
`q_norm`, `k_norm`. `targets=""` tunes every norm the model has, which for Llama is PEFT's
default (input_layernorm, post_attention_layernorm, norm). One wrapper serves both model
kinds: it forwards every call to the base model's own.

Artifacts: ours (`ln_tuning.safetensors`, the stacked copies under their model paths, and
`ln_tuning_config.json`), and for decoder-only models PEFT's LN_TUNING adapter (each
targeted module's full weights, `...<module>.ln_tuning_layers.weight` / `.bias`), which
`peft.PeftModel.from_pretrained` loads; `load` reads both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from prefix_jax.methods.api import Loaded, Method, Model, Writer
from prefix_jax.methods.common import read_artifact, write_artifact
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.pretrained import model_identity
from prefix_jax.models.seq2seq import EncoderDecoder

Array = jax.Array
Path_ = tuple[str, ...]  # a variable's path in the model, e.g. ("layers", "attn_norm_scale")
FORMAT_VERSION = 1
_SUFFIXES = ("_scale", "_bias")


class LNParam(nnx.Param):
    """Trainable copies of norm weights: the partition LN-tuning optimizes."""


@dataclasses.dataclass(frozen=True)
class LNTuningConfig:
    """Which norms train: comma-separated names (`attn_norm,final_norm`); "" = all."""

    targets: str = ""

    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]

    def num_params(self, model: ModelConfig) -> int:
        """Trainable parameter count of a decoder-only model: every targeted norm vector."""
        norms = {"attn_norm": model.num_layers, "mlp_norm": model.num_layers, "final_norm": 1}
        if model.post_norms:
            norms |= {"attn_post_norm": model.num_layers, "mlp_post_norm": model.num_layers}
        widths = dict.fromkeys(norms, model.hidden_size)
        if model.qk_norm:
            norms |= {"q_norm": model.num_layers, "k_norm": model.num_layers}
            widths |= {"q_norm": model.head_dim, "k_norm": model.head_dim}
        chosen = self.target_list() or list(norms)
        per_vector = 2 if model.norm == "layer" else 1
        return sum(norms[n] * widths[n] * per_vector for n in chosen if n in norms)


def norm_name(path: Path_) -> str:
    """`attn_norm` for ("layers", "attn_norm_scale")."""
    leaf = path[-1]
    return next(leaf[: -len(s)] for s in _SUFFIXES if leaf.endswith(s))


def norm_paths(model: Model, config: LNTuningConfig) -> tuple[Path_, ...]:
    """The paths of the norm weights `config` targets in `model`, in the model's order."""
    found = [
        tuple(str(k) for k in path)
        for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))
        if "norm" in str(path[-1]) and str(path[-1]).endswith(_SUFFIXES)
    ]
    available = list(dict.fromkeys(norm_name(p) for p in found))
    chosen = config.target_list() or available
    missing = [t for t in chosen if t not in available]
    if missing:
        raise ValueError(
            f"ln_tuning targets {missing} are not norms of this {model.config.family} model; "
            f"its norms: {', '.join(available)}"
        )
    return tuple(p for p in found if norm_name(p) in chosen)


def _attr(path: Path_) -> str:
    return "__".join(path)


class LNTuning(nnx.Module):
    """Trainable copies of the targeted norm weights of one model, by path."""

    def __init__(self, model: Model, config: LNTuningConfig):
        self.config = config
        self.paths = norm_paths(model, config)
        state = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
        for path in self.paths:
            var = state[path]
            # A copy, not the base's buffer: the train step donates what it trains.
            axes = var.get_metadata("logical_axes", None)
            setattr(self, _attr(path), LNParam(jnp.copy(var[...]), logical_axes=axes))

    def weights(self) -> dict[Path_, Array]:
        return {path: getattr(self, _attr(path))[...] for path in self.paths}


class LNTuningLM(nnx.Module):
    """A frozen base model (decoder-only or encoder-decoder) run with tuned norm weights.

    Every call goes to the base model's own method of that name, on `tuned()`; so the
    wrapper has whichever interface its base has (training and both decoders take it).
    """

    def __init__(self, base: Model, norms: LNTuning):
        state = dict(nnx.to_flat_state(nnx.state(base, nnx.Param)))
        for path, value in norms.weights().items():
            if path not in state or state[path].shape != value.shape:
                want = state[path].shape if path in state else "no such weight"
                raise ValueError(
                    f"ln_tuning weight {'.'.join(path)} {value.shape} does not fit the "
                    f"model ({want})"
                )
        self.base = base
        self.norms = norms

    @property
    def config(self):
        return self.base.config

    def tuned(self) -> Model:
        """The base model with the trainable copies in place of its norm weights."""
        graphdef, state = nnx.split(self.base)
        flat = dict(nnx.to_flat_state(state))
        for path, value in self.norms.weights().items():
            flat[path] = flat[path].replace(value)
        return nnx.merge(graphdef, nnx.from_flat_state(flat))

    def __call__(self, *args, dropout_key: Array | None = None, **kw):
        del dropout_key  # LN-tuning has no dropout
        return self.tuned()(*args, **kw)

    def hidden_states(self, *args, dropout_key: Array | None = None, **kw):
        del dropout_key
        return self.tuned().hidden_states(*args, **kw)

    def init_cache(self, *args, **kw):
        return self.tuned().init_cache(*args, **kw)

    def embed_tokens(self, tokens: Array) -> Array:
        return self.tuned().embed_tokens(tokens)

    def unembed(self, hidden: Array) -> Array:
        return self.tuned().unembed(hidden)

    def encode(self, *args, **kw):
        return self.tuned().encode(*args, **kw)

    def decode(self, *args, **kw):
        return self.tuned().decode(*args, **kw)


def create_ln_tuning(model: Model, config: LNTuningConfig) -> LNTuningLM:
    """The wrapper, its norms starting as the base's (so it computes the base's logits)."""
    return LNTuningLM(model, LNTuning(model, config))


# --- artifacts ----------------------------------------------------------------------------


def save(norms: LNTuning, model: Model, directory: str | Path, training: dict | None = None):
    """Our format: the stacked copies under their dotted model paths, and the targets."""
    tensors = {".".join(p): np.asarray(v) for p, v in norms.weights().items()}
    meta = {
        "format": "prefix_jax.ln_tuning",
        "version": FORMAT_VERSION,
        "targets": sorted({norm_name(p) for p in norms.paths}),
        "layout": "each weight as stored in the model ([layers, width] inside a layer stack)",
        "model": model_identity(model),
        "training": {"ln_tuning": dataclasses.asdict(norms.config), **(training or {})},
    }
    return write_artifact(
        directory, "ln_tuning.safetensors", tensors, "ln_tuning_config.json", meta
    )


# Our norm names -> Hugging Face module names inside a decoder layer (None: the final norm).
_LLAMA_MODULES = {
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
    "q_norm": "self_attn.q_norm",
    "k_norm": "self_attn.k_norm",
}
_POST_NORM_MODULES = {  # Gemma 2/3: four norms a layer
    "attn_norm": "input_layernorm",
    "attn_post_norm": "post_attention_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
    "q_norm": "self_attn.q_norm",
    "k_norm": "self_attn.k_norm",
}
_GPT2_MODULES = {"attn_norm": "ln_1", "mlp_norm": "ln_2"}


def _peft_keys(model: Model) -> dict[tuple[Path_, int | None], str]:
    """PEFT's tensor name of each (our path, layer) of every norm weight (layer None: not
    stacked). Decoder-only models only: PEFT's names for encoder-decoders are not mapped."""
    if isinstance(model, EncoderDecoder):
        raise ValueError("PEFT export of ln_tuning is for decoder-only models")
    c = model.config
    if c.family == "gpt2":
        layer, top, modules = "transformer.h", "transformer.ln_f", _GPT2_MODULES
    else:
        layer, top = "model.layers", "model.norm"
        modules = _POST_NORM_MODULES if c.post_norms else _LLAMA_MODULES
    keys = {}
    for path in norm_paths(model, LNTuningConfig()):
        name, kind = norm_name(path), "weight" if path[-1].endswith("_scale") else "bias"
        if len(path) == 1:
            keys[(path, None)] = f"base_model.model.{top}.ln_tuning_layers.{kind}"
            continue
        for i in range(c.num_layers):
            module = f"{layer}.{i}.{modules[name]}"
            keys[(path, i)] = f"base_model.model.{module}.ln_tuning_layers.{kind}"
    return keys


def _module(key: str) -> str:
    """The targeted module's own name (PEFT's `target_modules` entry) of a tensor name."""
    module = key.removesuffix(".ln_tuning_layers.weight").removesuffix(".ln_tuning_layers.bias")
    return module.rsplit(".", 1)[-1]


def save_peft(norms: LNTuning, model: Model, directory: str | Path) -> Path:
    """A PEFT LN_TUNING adapter: each targeted norm module's full weights."""
    weights = {p: np.asarray(v) for p, v in norms.weights().items()}
    tensors = {
        key: weights[path] if layer is None else weights[path][layer]
        for (path, layer), key in _peft_keys(model).items()
        if path in weights
    }
    config = {
        "peft_type": "LN_TUNING",
        "task_type": "CAUSAL_LM",
        "target_modules": sorted({_module(k) for k in tensors}),
        "exclude_modules": None,
        "modules_to_save": None,
        "inference_mode": True,
        "base_model_name_or_path": model.config.name,
        "revision": None,
    }
    return write_artifact(
        directory, "adapter_model.safetensors", tensors, "adapter_config.json", config
    )


def load(directory: str | Path, model: Model) -> LNTuning:
    """The tuned norms `save` or `save_peft` wrote (detected by the files), checked
    against `model`."""
    directory = Path(directory)
    if (directory / "adapter_config.json").exists():
        return _load_peft(directory, model)
    tensors, meta = read_artifact(
        directory, "ln_tuning.safetensors", "ln_tuning_config.json", "prefix_jax.ln_tuning"
    )
    norms = LNTuning(model, LNTuningConfig(",".join(meta["targets"])))
    return _filled(norms, {tuple(k.split(".")): v for k, v in tensors.items()}, directory)


def _load_peft(directory: Path, model: Model) -> LNTuning:
    config = json.loads((directory / "adapter_config.json").read_text())
    if config.get("peft_type") != "LN_TUNING":
        raise ValueError(
            f"{directory}: peft_type is {config.get('peft_type')!r}, not an LN_TUNING adapter"
        )
    tensors = load_file(directory / "adapter_model.safetensors")
    keys = _peft_keys(model)
    unknown = set(tensors) - set(keys.values())
    if unknown:
        raise ValueError(f"{directory}: tensors {sorted(unknown)[:3]} match no norm of the model")
    found = {path for (path, _), key in keys.items() if key in tensors}
    targets = ",".join(dict.fromkeys(norm_name(p) for p in found))
    norms = LNTuning(model, LNTuningConfig(targets))
    weights = {p: np.array(v) for p, v in norms.weights().items()}  # writable copies
    for (path, layer), key in keys.items():
        if path in weights and key in tensors:
            if layer is None:
                weights[path] = tensors[key]
            else:
                weights[path][layer] = tensors[key]
    return _filled(norms, weights, directory)


def _filled(norms: LNTuning, weights: dict[Path_, np.ndarray], directory: Path) -> LNTuning:
    for path in norms.paths:
        param = getattr(norms, _attr(path))
        value = weights.get(path)
        if value is None or value.shape != param.shape:
            got = "missing" if value is None else f"shape {value.shape}"
            raise ValueError(
                f"{directory}: ln_tuning weight {'.'.join(path)} is {got}; this model needs "
                f"{param.shape} (was it exported for another model?)"
            )
        param[...] = jnp.asarray(value, param[...].dtype)
    return norms


class LNTuningMethod(Method):
    """LN-tuning; a starting rate for the norm scales, not tuned here."""

    name = "ln_tuning"
    config_block = "ln_tuning"
    config_class = LNTuningConfig
    optimizer = ({"learning_rate": 1e-3}, {"learning_rate": 5e-3})

    def create(self, model: Model, config: ml_collections.ConfigDict, tokenizer=None):
        del tokenizer
        return create_ln_tuning(model, self.read_config(config)), LNParam, {}

    def export(self, lm: nnx.Module, model: Model, training: dict) -> dict[str, Writer]:
        writers = {"export": lambda d: save(lm.norms, model, d, training)}
        if not isinstance(model, EncoderDecoder):
            writers["export_peft"] = lambda d: save_peft(lm.norms, model, d)
        return writers

    def load(self, directory: str | Path, model: Model) -> Loaded:
        return Loaded(LNTuningLM(model, load(directory, model)))
