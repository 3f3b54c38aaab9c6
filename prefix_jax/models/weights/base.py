"""What every checkpoint reader shares: the error type, per-layer tensors seen as one
stacked array, and the small layout conversions (heads, fused rows) of the name maps.

Every conversion is a view: a memory-mapped tensor stays unread until a device asks for
its slice (see `prefix_jax.models.pretrained`).
"""

from __future__ import annotations

import numpy as np

from prefix_jax.models.config import ModelConfig


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match its config."""


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


class Stacker:
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


def tensor(raw: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The tensor as stored (a memory map stays one): converted only when placed."""
    if name not in raw:
        raise CheckpointError(f"checkpoint lacks tensor {name!r}")
    return raw[name]


def heads_in(w_out_in: np.ndarray, heads: int, name: str, d: int) -> np.ndarray:
    """[heads*hd, d] (PyTorch Linear layout) -> [d, heads, hd], as a view."""
    if w_out_in.ndim != 2 or w_out_in.shape[1] != d or w_out_in.shape[0] % heads:
        raise CheckpointError(
            f"tensor {name!r} has shape {w_out_in.shape}; expected [{heads} * head_dim, {d}]"
        )
    return w_out_in.reshape(heads, -1, d).transpose(2, 0, 1)


def split_rows(w: np.ndarray, name: str, sizes: list[int], d: int) -> list[np.ndarray]:
    """Row blocks of a fused [sum(sizes), d] weight (PyTorch Linear layout), as views."""
    if w.ndim != 2 or w.shape != (sum(sizes), d):
        raise CheckpointError(
            f"fused tensor {name!r} has shape {tuple(w.shape)}; the config implies "
            f"{(sum(sizes), d)} ({' + '.join(map(str, sizes))} rows of width {d})"
        )
    bounds = np.cumsum([0, *sizes])
    return [w[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def unfuse(
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
            pieces = split_rows(out.pop(prefix + name), prefix + name, sizes, c.hidden_size)
            out.update({prefix + part: w for (part, _), w in zip(parts, pieces, strict=True)})
    return out
