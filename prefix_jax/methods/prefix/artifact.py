"""Export and import collapsed prefixes: our format and the PEFT adapter format.

Our format is a directory with `prefix.safetensors` (one tensor `prefix`, [p, layers * 2 *
kv_dim], PEFT's layout) and `prefix_config.json` (model identity and shape, p, how it was
trained). The MLP reparameterization is evaluated away: an exported prefix is for
inference. Training checkpoints (orbax) keep the MLP so training can resume.

An encoder-decoder's prefixes (Li & Liang's encoder, decoder and cross-attention parts)
export into the same two files: one tensor per part, named by the part, and a `parts`
entry in `prefix_config.json` giving each part's shape.

The PEFT format is `adapter_config.json` (`peft_type: PREFIX_TUNING`, no projection) and
`adapter_model.safetensors` holding `prompt_embeddings` of the same [p, layers*2*kv_dim]
shape, which `peft.PeftModel.from_pretrained` loads.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from prefix_jax.files import atomic_write
from prefix_jax.methods.prefix.core import (
    Prefix,
    PrefixParts,
    PrefixShape,
    prefix_shapes,
    table_to_prefix,
)
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.kv import PrefixKV
from prefix_jax.models.pretrained import model_identity
from prefix_jax.models.seq2seq import EncoderDecoder, Seq2SeqPrefix
from prefix_jax.models.transformer import Transformer
from prefix_jax.scale.sharding import host_value

FORMAT_VERSION = 1


class PrefixMismatchError(ValueError):
    """A prefix does not fit the model it is loaded against."""


@dataclasses.dataclass
class ExportedPrefix:
    """A collapsed prefix: the [p, layers*2*kv_dim] table and what it was made for."""

    table: np.ndarray
    num_layers: int
    num_kv_heads: int
    head_dim: int
    positions_after_prefix: bool
    model: dict
    training: dict = dataclasses.field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.table.shape[0]

    def check(self, model: Transformer) -> None:
        """Raise PrefixMismatchError naming the first difference from `model`."""
        if isinstance(model, EncoderDecoder):
            raise PrefixMismatchError(
                "this prefix is a decoder-only model's; an encoder-decoder needs prefix parts"
            )
        self.check_shape(prefix_shapes(model.config)["decoder"], "prefix")
        _check_identity(self.model, model)

    def check_shape(self, shape: PrefixShape, what: str) -> None:
        for field in ("num_layers", "num_kv_heads", "head_dim"):
            got, want = getattr(self, field), getattr(shape, field)
            if got != want:
                raise PrefixMismatchError(f"{what} has {field}={got} but the model has {want}")
        expected_width = 2 * shape.num_layers * shape.kv_dim
        if self.table.ndim != 2 or self.table.shape[1] != expected_width:
            raise PrefixMismatchError(
                f"{what} table has shape {self.table.shape}; the model needs [p, {expected_width}]"
            )

    def to_prefix_kv(self, model: Transformer) -> PrefixKV:
        self.check(model)
        return table_to_prefix(
            jnp.asarray(self.table), model.config, after_prefix=self.positions_after_prefix
        )


def _check_identity(recorded: dict, model: Transformer | EncoderDecoder) -> None:
    for key in ("family", "hidden_size", "vocab_size"):
        if key in recorded and recorded[key] != model_identity(model)[key]:
            raise PrefixMismatchError(
                f"prefix was trained on a model with {key}={recorded[key]!r}, "
                f"this model has {model_identity(model)[key]!r}"
            )


@dataclasses.dataclass
class ExportedParts:
    """Collapsed prefixes of an encoder-decoder, by part (`encoder`, `decoder`, `cross`)."""

    parts: dict[str, ExportedPrefix]
    model: dict
    training: dict = dataclasses.field(default_factory=dict)

    def check(self, model: Transformer | EncoderDecoder) -> None:
        """Raise PrefixMismatchError naming the first difference from `model`."""
        if not isinstance(model, EncoderDecoder):
            raise PrefixMismatchError(
                f"these are encoder-decoder prefix parts ({', '.join(self.parts)}); the model "
                "is decoder-only"
            )
        shapes = prefix_shapes(model.config)
        for part, exported in self.parts.items():
            exported.check_shape(shapes[part], f"{part} prefix")
        _check_identity(self.model, model)

    def to_prefix_kv(self, model: EncoderDecoder) -> Seq2SeqPrefix:
        self.check(model)
        return Seq2SeqPrefix(
            **{
                part: table_to_prefix(jnp.asarray(e.table), e, e.positions_after_prefix)
                for part, e in self.parts.items()
            }
        )


def collapse(
    prefix: Prefix | PrefixParts, model: Transformer | EncoderDecoder, training: dict | None = None
) -> ExportedPrefix | ExportedParts:
    """Evaluate the prefix (MLP included, no dropout) into an ExportedPrefix, or each part
    of an encoder-decoder's into ExportedParts."""
    if isinstance(prefix, PrefixParts):
        parts = {part: collapse(getattr(prefix, part), model) for part in prefix.parts}
        training = {"prefix": dataclasses.asdict(prefix.config), **(training or {})}
        return ExportedParts(parts, model_identity(model), training)
    c: ModelConfig | PrefixShape = prefix.model_config
    return ExportedPrefix(
        table=np.asarray(host_value(prefix.table()), np.float32),
        num_layers=c.num_layers,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        positions_after_prefix=prefix.config.positions == "after_prefix",
        model=model_identity(model),
        training={"prefix": dataclasses.asdict(prefix.config), **(training or {})},
    )


def save(exported: ExportedPrefix | ExportedParts, directory: str | Path) -> Path:
    """Write our format; files are written to temporaries first, then renamed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(exported, ExportedParts):
        return _save_parts(exported, directory)
    meta = {
        "format": "prefix_jax.prefix",
        "version": FORMAT_VERSION,
        "length": exported.length,
        "num_layers": exported.num_layers,
        "num_kv_heads": exported.num_kv_heads,
        "head_dim": exported.head_dim,
        "kv_dim": exported.num_kv_heads * exported.head_dim,
        "positions_after_prefix": exported.positions_after_prefix,
        "layout": "[p, layers, 2 (key, value), kv_heads, head_dim] flattened per row",
        "model": exported.model,
        "training": exported.training,
    }
    atomic_write(
        directory / "prefix.safetensors", lambda p: save_file({"prefix": exported.table}, p)
    )
    atomic_write(
        directory / "prefix_config.json", lambda p: p.write_text(json.dumps(meta, indent=2))
    )
    return directory


def _shape_meta(e: ExportedPrefix) -> dict:
    return {
        "length": e.length,
        "num_layers": e.num_layers,
        "num_kv_heads": e.num_kv_heads,
        "head_dim": e.head_dim,
        "kv_dim": e.num_kv_heads * e.head_dim,
        "positions_after_prefix": e.positions_after_prefix,
    }


def _save_parts(exported: ExportedParts, directory: Path) -> Path:
    meta = {
        "format": "prefix_jax.prefix",
        "version": FORMAT_VERSION,
        "parts": {part: _shape_meta(e) for part, e in exported.parts.items()},
        "layout": "one tensor per part: [p, layers, 2 (key, value), kv_heads, head_dim] per row",
        "model": exported.model,
        "training": exported.training,
    }
    tensors = {part: e.table for part, e in exported.parts.items()}
    atomic_write(directory / "prefix.safetensors", lambda p: save_file(tensors, p))
    atomic_write(
        directory / "prefix_config.json", lambda p: p.write_text(json.dumps(meta, indent=2))
    )
    return directory


def _parts_from(tensors: dict[str, np.ndarray], meta: dict, file: Path) -> ExportedParts:
    parts = {}
    for part, shape in meta["parts"].items():
        if part not in tensors:
            raise ValueError(f"{file} has no tensor for the {part} prefix; found {sorted(tensors)}")
        parts[part] = ExportedPrefix(
            table=tensors[part],
            num_layers=shape["num_layers"],
            num_kv_heads=shape["num_kv_heads"],
            head_dim=shape["head_dim"],
            positions_after_prefix=shape["positions_after_prefix"],
            model=meta.get("model", {}),
        )
    return ExportedParts(parts, meta.get("model", {}), meta.get("training", {}))


def load(
    directory: str | Path, model: Transformer | EncoderDecoder | None = None
) -> ExportedPrefix | ExportedParts:
    """Read a prefix saved by `save` or by PEFT (detected by its files); check it if a
    model is given."""
    directory = Path(directory)
    if (directory / "adapter_config.json").exists():
        exported = load_peft(directory)
    else:
        config_file = directory / "prefix_config.json"
        weights = directory / "prefix.safetensors"
        for f in (config_file, weights):
            if not f.exists():
                raise FileNotFoundError(f"{f} not found: not an exported prefix directory")
        meta = json.loads(config_file.read_text())
        if "parts" in meta:
            exported = _parts_from(load_file(weights), meta, weights)
            if model is not None:
                exported.check(model)
            return exported
        exported = ExportedPrefix(
            table=load_file(weights)["prefix"],
            num_layers=meta["num_layers"],
            num_kv_heads=meta["num_kv_heads"],
            head_dim=meta["head_dim"],
            positions_after_prefix=meta["positions_after_prefix"],
            model=meta.get("model", {}),
            training=meta.get("training", {}),
        )
    if model is not None:
        exported.check(model)
    return exported


def peft_seq2seq_slots(num_layers: int) -> list[int]:
    """Which of its table's layer slots PEFT's SEQ_2_SEQ_LM prefix gives each decoder layer.

    PEFT 0.21 (`PeftModel.get_prompt`) doubles the table's `2 * num_layers` key/value rows
    for two submodules and cuts the result into groups of four (self key, self value, cross
    key, cross value), then drops the cross half: decoder layer i reads slot 2i mod L. For
    an odd L that is a permutation; for an even L (BART-large: 12) layers i and i + L/2
    read the same slot and the odd slots are never read.
    """
    return [(2 * i) % num_layers for i in range(num_layers)]


def peft_exportable(exported: ExportedPrefix | ExportedParts) -> bool:
    """Whether PEFT can hold this prefix exactly: a decoder's, or an encoder-decoder's with
    the decoder self-attention part alone (PEFT 0.21 prefixes nothing else of BART/T5) and
    an odd number of decoder layers (see `peft_seq2seq_slots`)."""
    if not isinstance(exported, ExportedParts):
        return True
    decoder = exported.parts.get("decoder")
    return set(exported.parts) == {"decoder"} and decoder.num_layers % 2 == 1


def _layer_rows(table: np.ndarray, num_layers: int) -> np.ndarray:
    """[p, L * 2 * kv] -> [L, p, 2 * kv]: the table by layer slot."""
    return table.reshape(table.shape[0], num_layers, -1).transpose(1, 0, 2)


def _to_peft_seq2seq(table: np.ndarray, num_layers: int) -> np.ndarray:
    rows = _layer_rows(table, num_layers)
    peft = np.empty_like(rows)
    peft[peft_seq2seq_slots(num_layers)] = rows
    return peft.transpose(1, 0, 2).reshape(table.shape)


def _from_peft_seq2seq(table: np.ndarray, num_layers: int) -> np.ndarray:
    rows = _layer_rows(table, num_layers)[peft_seq2seq_slots(num_layers)]
    return rows.transpose(1, 0, 2).reshape(table.shape)


def save_peft(
    exported: ExportedPrefix | ExportedParts,
    directory: str | Path,
    base_model_name_or_path: str = "",
) -> Path:
    """Write a PEFT PREFIX_TUNING adapter (projection collapsed, so it loads in PEFT).

    An encoder-decoder's decoder prefix becomes a SEQ_2_SEQ_LM adapter (PEFT counts two
    submodules there, and still saves and reads p rows for prefix-tuning).
    """
    seq2seq = isinstance(exported, ExportedParts)
    if seq2seq and set(exported.parts) != {"decoder"}:
        raise ValueError(
            f"PEFT prefixes only an encoder-decoder's decoder self-attention; this prefix has "
            f"parts {', '.join(exported.parts)} (train with prefix.parts='decoder' to export)"
        )
    if seq2seq and not peft_exportable(exported):
        raise ValueError(
            f"PEFT's SEQ_2_SEQ_LM prefix gives decoder layers i and i + L/2 one prefix when the "
            f"number of decoder layers L is even (here {exported.parts['decoder'].num_layers}); "
            "this prefix has its own per layer, so PEFT cannot hold it"
        )
    model = exported.model
    if seq2seq:
        exported = exported.parts["decoder"]
    if not exported.positions_after_prefix:
        warnings.warn(
            "this prefix was trained with token positions starting at 0; PEFT numbers tokens "
            "after the prefix (from p), so its outputs in PEFT will differ. Train with "
            "prefix.positions='after_prefix' for an exact PEFT round trip.",
            stacklevel=2,
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kv_dim = exported.num_kv_heads * exported.head_dim
    submodules = 2 if seq2seq else 1
    config = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        "num_virtual_tokens": exported.length,
        "token_dim": kv_dim,
        "num_transformer_submodules": submodules,
        "num_attention_heads": exported.num_kv_heads,
        "num_layers": exported.num_layers,
        "encoder_hidden_size": kv_dim,
        "prefix_projection": False,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path or model.get("name", ""),
        "revision": None,
    }
    table = exported.table
    if seq2seq:
        table = _to_peft_seq2seq(table, exported.num_layers)
    table = np.ascontiguousarray(table, np.float32)
    atomic_write(
        directory / "adapter_model.safetensors",
        lambda p: save_file({"prompt_embeddings": table}, p),
    )
    atomic_write(
        directory / "adapter_config.json", lambda p: p.write_text(json.dumps(config, indent=2))
    )
    return directory


def load_peft(directory: str | Path) -> ExportedPrefix | ExportedParts:
    """Import a PEFT PREFIX_TUNING adapter (saved with or without projection); a
    SEQ_2_SEQ_LM one as an encoder-decoder's decoder prefix."""
    directory = Path(directory)
    config_file = directory / "adapter_config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found: not a PEFT adapter directory")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "PREFIX_TUNING":
        raise ValueError(
            f"{config_file}: peft_type is {config.get('peft_type')!r}; only PREFIX_TUNING "
            "adapters can be imported as prefixes"
        )
    submodules = config.get("num_transformer_submodules", 1)
    seq2seq = config.get("task_type") == "SEQ_2_SEQ_LM"
    if submodules != (2 if seq2seq else 1):
        raise ValueError(
            f"{config_file}: num_transformer_submodules={submodules} with task_type "
            f"{config.get('task_type')!r} is not a prefix layout this project reads"
        )
    weights = directory / "adapter_model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found (only safetensors adapters are read)")
    tensors = load_file(weights)
    key = next((k for k in tensors if k.endswith("prompt_embeddings")), None)
    if key is None:
        raise ValueError(f"{weights} has no prompt_embeddings tensor; found {sorted(tensors)}")
    table = np.asarray(tensors[key], np.float32)
    layers, heads = config["num_layers"], config["num_attention_heads"]
    token_dim, p = config["token_dim"], config["num_virtual_tokens"]
    expected = (p, 2 * layers * token_dim)
    if table.shape != expected:
        raise ValueError(
            f"{weights}: prompt_embeddings has shape {table.shape}, config implies {expected}"
        )
    exported = ExportedPrefix(
        table=_from_peft_seq2seq(table, layers) if seq2seq else table,
        num_layers=layers,
        num_kv_heads=heads,
        head_dim=token_dim // heads,
        positions_after_prefix=True,
        model={"name": config.get("base_model_name_or_path", "")},
        training={"source": "peft", "peft_config": config},
    )
    if seq2seq:
        return ExportedParts({"decoder": exported}, exported.model, exported.training)
    return exported
