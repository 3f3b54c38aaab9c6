"""What a method is to the rest of the project: one object per method, found by name in
`prefix_jax.methods.registry`.

`Method` is a base class rather than a Protocol because most of a method's answers are
shared: reading its config block (unknown keys are an error), its defaults, its optimizer
settings and the FLOP facts of a method that adds no tokens. A method subclass states its
facts as class attributes and overrides `create`, `export` and `load`; training,
evaluation, the sweeps, the AOT check and the benchmarks ask it rather than comparing its
name.

The experiment config (`config`) is an ml_collections ConfigDict with a block per method
(`config.prefix`, `config.lora`, ...); a method reads only its own block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import ml_collections
from flax import nnx

from prefix_jax.models.kv import PrefixKV
from prefix_jax.models.seq2seq import EncoderDecoder, Seq2SeqPrefix
from prefix_jax.models.transformer import Transformer

Model = Transformer | EncoderDecoder
Writer = Callable[[Path], Path]


@dataclasses.dataclass
class Loaded:
    """What decoding needs from a method's artifact: the model to decode with (a method
    wrapper, or the base itself) and the prefix to pass to the decoder, if any."""

    model: nnx.Module
    prefix: PrefixKV | Seq2SeqPrefix | None = None


class Method:
    """One parameter-efficient method (or a baseline), with everything that depends on it."""

    name: ClassVar[str]
    # The config block the method reads (`config.<config_block>`) and its dataclass.
    config_block: ClassVar[str]
    config_class: ClassVar[type]
    # Config block values that differ from the dataclass's defaults (the experiments' choice).
    defaults: ClassVar[dict[str, Any]] = {}
    # Config keys that follow a trial's seed in a sweep (the method's own init seed).
    seed_keys: ClassVar[tuple[str, ...]] = ()
    # Optimizer settings over the task config's: (full runs, `:local` runs).
    optimizer: ClassVar[tuple[dict[str, Any], dict[str, Any]]] = ({}, {})
    # Whether the backward pass builds gradients of the base's weight matrices (2 forward
    # passes of backward instead of 1; the AOT FLOP model's full fine-tuning case).
    trains_base_weights: ClassVar[bool] = False
    # Whether a run exports a small artifact; without one it is read from its checkpoint.
    has_artifact: ClassVar[bool] = True

    def default_config(self) -> dict[str, Any]:
        """The method's config block as the experiment configs start it."""
        return {**dataclasses.asdict(self.config_class()), **self.defaults}

    def optimizer_defaults(self, local: bool) -> dict[str, Any]:
        """Optimizer overrides for this method (`local`: the laptop-sized runs)."""
        return dict(self.optimizer[1 if local else 0])

    def read_config(self, config: ml_collections.ConfigDict):
        """The method's config dataclass from `config.<config_block>`; unknown keys are an
        error naming them."""
        names = {f.name for f in dataclasses.fields(self.config_class)}
        block = config[self.config_block]
        unknown = set(block.keys()) - names
        if unknown:
            raise ValueError(
                f"unknown config.{self.config_block} fields: {sorted(unknown)}; "
                f"known: {sorted(names)}"
            )
        return self.config_class(**block.to_dict())

    def create(
        self, model: Model, config: ml_collections.ConfigDict, tokenizer=None
    ) -> tuple[nnx.Module, nnx.filterlib.Filter, dict[str, float]]:
        """(trainable model wrapping `model`, its trainable filter, init diagnostics)."""
        raise NotImplementedError

    def export(self, lm: nnx.Module, model: Model, training: dict) -> dict[str, Writer]:
        """The trained artifact's writers by directory name: ours as `export`, PEFT's as
        `export_peft` where PEFT can hold it. `lm` is what `create` returned, trained."""
        raise NotImplementedError

    def load(self, directory: str | Path, model: Model) -> Loaded:
        """The artifact `export` wrote (our format; PEFT's where the method reads it),
        checked against `model`."""
        raise NotImplementedError

    def extra_input_tokens(self, config: ml_collections.ConfigDict) -> int:
        """Positions the method adds to every input sequence (a soft prompt's)."""
        del config
        return 0

    def extra_key_positions(self, config: ml_collections.ConfigDict) -> int:
        """Key/value positions every attention gets beyond the input's (a prefix's)."""
        del config
        return 0
