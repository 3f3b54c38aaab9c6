"""Full fine-tuning, and fine-tuning of the top k layers only (FT-top2 in Li & Liang).

Full (`top_layers=0`): every weight is trainable; the trainable filter is `nnx.Param`.
The train step donates the trainable state, which here is the base model's own arrays:
the model passed in is consumed by training (copy it first to keep the untuned model).

Top k (`top_layers=k`): only the last k decoder layers train (all their weights, norms
included); embeddings, lower layers, the final norm and the head stay frozen. Layer
weights are stacked, one [L, ...] array per name, and a variable type cannot select a
slice of an array, so `TopLayers` holds trainable copies (`TopLayerParam`) of the top k
slices, which the transformer's `top_layers` hook swaps in. The layers run as two scans, so
there is no backward pass, gradient or optimizer state below the top k, and the lower
layers stay bitwise unchanged. The price is that the base's own top-k slices stay in
memory unused (k/L of the layer weights); `count_params` counts them once
(`num_shadowed_params`). Neither variant has dropout: the base transformer has none.

An encoder-decoder is fine-tuned whole (both stacks, embeddings and head; Li & Liang's
fine-tuning baseline on XSum); top-k is for decoder-only models.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_collections
from flax import nnx

from prefix_jax.methods.api import Loaded, Method, Model, Writer
from prefix_jax.methods.common import WrappedLM
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.seq2seq import EncoderDecoder
from prefix_jax.models.transformer import DecoderLayers, Transformer

Array = jax.Array


class TopLayerParam(nnx.Param):
    """Trainable copies of the top k layers' weights: the partition FT-top-k optimizes."""


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Which weights fine-tuning trains: all of them, or the last `top_layers` layers."""

    top_layers: int = 0  # 0 = full fine-tuning; k > 0 = only the last k decoder layers

    def __post_init__(self) -> None:
        if self.top_layers < 0:
            raise ValueError(
                f"finetune top_layers must be 0 (all weights) or positive, got {self.top_layers}"
            )

    @property
    def trainable(self) -> type[nnx.Param]:
        """The trainable filter: every parameter, or the top-layer copies only."""
        return TopLayerParam if self.top_layers else nnx.Param

    def num_params(self, model: ModelConfig) -> int:
        """Trainable parameter count: the whole model, or k layers' share of it."""
        if not self.top_layers:
            return model.num_params()
        d = model.hidden_size
        outside_layers = (
            model.vocab_size * d * (1 if model.tie_embeddings else 2)
            + d * (2 if model.norm == "layer" else 1)
            + (model.max_position_embeddings * d if model.positions == "learned" else 0)
        )
        return self.top_layers * (model.num_params() - outside_layers) // model.num_layers


class TopLayers(nnx.Module):
    """Trainable copies of every stacked layer weight's last k slices ([k, ...] each)."""

    def __init__(self, layers: DecoderLayers, k: int):
        for name, var in vars(layers).items():
            if isinstance(var, nnx.Param):
                axes = var.get_metadata("logical_axes")
                setattr(self, name, TopLayerParam(var[...][-k:], logical_axes=axes))

    def weights(self) -> dict[str, Array]:
        return {n: v[...] for n, v in vars(self).items() if isinstance(v, TopLayerParam)}


class FinetuneLM(WrappedLM):
    """The base model, trained whole or (decoder-only) in its top `top_layers` layers."""

    def __init__(self, base: Transformer | EncoderDecoder, top_layers: int = 0):
        if isinstance(base, EncoderDecoder) and top_layers:
            raise ValueError(
                f"finetune top_layers={top_layers} is for decoder-only models; an "
                "encoder-decoder is fine-tuned whole (top_layers=0)"
            )
        if not isinstance(base, EncoderDecoder) and not 0 <= top_layers <= base.config.num_layers:
            raise ValueError(
                f"finetune top_layers={top_layers} is outside [0, {base.config.num_layers}] "
                "(the model's layers)"
            )
        self.base = base
        self.top_layers = top_layers
        if top_layers:
            self.top = TopLayers(base.layers, top_layers)

    @property
    def num_shadowed_params(self) -> int:
        """Frozen base parameters that the trainable top-layer copies replace."""
        if not self.top_layers:
            return 0
        return sum(x.size for x in jax.tree.leaves(nnx.state(self.top, TopLayerParam)))

    def forward_kwargs(self, dropout_key: Array | None) -> dict:
        del dropout_key
        return {"top_layers": self.top.weights()} if self.top_layers else {}


def create_finetune(
    model: Transformer | EncoderDecoder, config: FinetuneConfig
) -> tuple[FinetuneLM, dict[str, float]]:
    """The fine-tuning wrapper (train it with `config.trainable`) and (no) init info."""
    return FinetuneLM(model, config.top_layers), {}


class FinetuneMethod(Method):
    """Full fine-tuning (`finetune.top_layers=k`: the last k layers only). No small
    artifact: the trained weights are the run's checkpoint. The usual GPT-2 fine-tuning
    rate 5e-5."""

    name = "full"
    config_block = "finetune"
    config_class = FinetuneConfig
    optimizer = ({"learning_rate": 5e-5}, {"learning_rate": 1e-4})
    trains_base_weights = True
    has_artifact = False

    def create(self, model: Model, config: ml_collections.ConfigDict, tokenizer=None):
        del tokenizer
        finetune = self.read_config(config)
        lm, info = create_finetune(model, finetune)
        return lm, finetune.trainable, info

    def export(self, lm: nnx.Module, model: Model, training: dict) -> dict[str, Writer]:
        return {}

    def load(self, directory: str | Path, model: Model) -> Loaded:
        raise ValueError("full fine-tuning has no export to load: it is read from checkpoints")
