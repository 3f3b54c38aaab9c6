"""Export and import collapsed prefixes: our format and the PEFT adapter format.

Our format is a directory with `prefix.safetensors` (one tensor `prefix`, [p, layers * 2 *
kv_dim], PEFT's layout) and `prefix_config.json` (model identity and shape, p, how it was
trained). The MLP reparameterization is evaluated away: an exported prefix is for
inference. Training checkpoints (orbax) keep the MLP so training can resume.

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

from prefix_jax.methods.common import atomic_write
from prefix_jax.methods.prefix import Prefix, table_to_prefix
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.loading import model_identity
from prefix_jax.models.transformer import PrefixKV, Transformer
from prefix_jax.sharding import host_value

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
        c = model.config
        for field, want in (
            ("num_layers", c.num_layers),
            ("num_kv_heads", c.num_kv_heads),
            ("head_dim", c.head_dim),
        ):
            got = getattr(self, field)
            if got != want:
                raise PrefixMismatchError(f"prefix has {field}={got} but the model has {want}")
        expected_width = 2 * c.num_layers * c.kv_dim
        if self.table.ndim != 2 or self.table.shape[1] != expected_width:
            raise PrefixMismatchError(
                f"prefix table has shape {self.table.shape}; the model needs [p, {expected_width}]"
            )
        for key in ("family", "hidden_size", "vocab_size"):
            if key in self.model and self.model[key] != model_identity(model)[key]:
                raise PrefixMismatchError(
                    f"prefix was trained on a model with {key}={self.model[key]!r}, "
                    f"this model has {model_identity(model)[key]!r}"
                )

    def to_prefix_kv(self, model: Transformer) -> PrefixKV:
        self.check(model)
        return table_to_prefix(
            jnp.asarray(self.table), model.config, after_prefix=self.positions_after_prefix
        )


def collapse(prefix: Prefix, model: Transformer, training: dict | None = None) -> ExportedPrefix:
    """Evaluate the prefix (MLP included, no dropout) into an ExportedPrefix."""
    c: ModelConfig = prefix.model_config
    return ExportedPrefix(
        table=np.asarray(host_value(prefix.table()), np.float32),
        num_layers=c.num_layers,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        positions_after_prefix=prefix.config.positions == "after_prefix",
        model=model_identity(model),
        training={"prefix": dataclasses.asdict(prefix.config), **(training or {})},
    )


def save(exported: ExportedPrefix, directory: str | Path) -> Path:
    """Write our format; files are written to temporaries first, then renamed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
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


def load(directory: str | Path, model: Transformer | None = None) -> ExportedPrefix:
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


def save_peft(
    exported: ExportedPrefix, directory: str | Path, base_model_name_or_path: str = ""
) -> Path:
    """Write a PEFT PREFIX_TUNING adapter (projection collapsed, so it loads in PEFT)."""
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
    config = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": exported.length,
        "token_dim": kv_dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": exported.num_kv_heads,
        "num_layers": exported.num_layers,
        "encoder_hidden_size": kv_dim,
        "prefix_projection": False,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path or exported.model.get("name", ""),
        "revision": None,
    }
    table = np.ascontiguousarray(exported.table, np.float32)
    atomic_write(
        directory / "adapter_model.safetensors",
        lambda p: save_file({"prompt_embeddings": table}, p),
    )
    atomic_write(
        directory / "adapter_config.json", lambda p: p.write_text(json.dumps(config, indent=2))
    )
    return directory


def load_peft(directory: str | Path) -> ExportedPrefix:
    """Import a PEFT PREFIX_TUNING adapter (saved with or without projection)."""
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
    if config.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{config_file}: encoder-decoder prefixes are not supported")
    weights = directory / "adapter_model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found (only safetensors adapters are read)")
    tensors = load_file(weights)
    key = next((k for k in tensors if k.endswith("prompt_embeddings")), None)
    if key is None:
        raise ValueError(f"{weights} has no prompt_embeddings tensor; found {sorted(tensors)}")
    table = np.asarray(tensors[key], np.float32)
    layers, heads = config["num_layers"], config["num_attention_heads"]
    token_dim = config["token_dim"]
    expected = (config["num_virtual_tokens"], 2 * layers * token_dim)
    if table.shape != expected:
        raise ValueError(
            f"{weights}: prompt_embeddings has shape {table.shape}, config implies {expected}"
        )
    return ExportedPrefix(
        table=table,
        num_layers=layers,
        num_kv_heads=heads,
        head_dim=token_dim // heads,
        positions_after_prefix=True,
        model={"name": config.get("base_model_name_or_path", "")},
        training={"source": "peft", "peft_config": config},
    )
