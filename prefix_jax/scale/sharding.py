"""Device meshes and logical-axis sharding rules (the t5x / big_vision convention).

Every parameter records logical axis names (`embed`, `heads`, `kv_heads`, `mlp`, `vocab`,
`layers`, ...) as `logical_axes` metadata. Rules in the config map each logical name to a
mesh axis (or a tuple of them, or None = replicated). A dimension whose size the mesh axes
do not divide is replicated instead (e.g. SmolLM2's 3 KV heads on a tensor axis of 2).

Activations carry logical axes too (`batch`, `length`, `embed`, `heads`, `mlp`, `vocab`,
`cache_length`): the model constrains them through an `ActivationSharding`, so the mesh, not
the compiler's guess, decides where every large array lives (MaxText / levanter style).
Under FSDP a batch-sharded activation meets an embed-sharded weight, and the constraint
makes XLA gather that one layer's weight rather than replicate the activations.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Frozen weights: FSDP over the model width, tensor parallelism over heads / MLP / vocab.
# The prefix's output width (`prefix_kv`, layers x 2 x kv_dim) is split over fsdp too: the
# MLP's last layer [hidden, width] and its gradients and Adam moments are the bulk of the
# training state, about 0.5 GB per chip if replicated for an 8B model at p=10.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("head_dim", None),
    ("prefix_len", None),
    ("prefix_embed", None),
    ("prefix_hidden", None),
    ("prefix_kv", "fsdp"),
)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence | None = None) -> Mesh:
    """A mesh from (name, size) pairs; one size may be -1 (= the remaining devices)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    names = tuple(name for name, _ in axes)
    sizes = [int(size) for _, size in axes]
    unknown = [n for n in names if n not in MESH_AXES]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"mesh axes must be distinct names from {MESH_AXES}, got {names}")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive, with at most one -1; got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if devices.size % known:
            raise ValueError(
                f"mesh {dict(zip(names, sizes, strict=True))} does not divide "
                f"{devices.size} devices"
            )
        sizes[sizes.index(-1)] = devices.size // known
    if math.prod(sizes) != devices.size:
        raise ValueError(
            f"mesh {dict(zip(names, sizes, strict=True))} needs {math.prod(sizes)} devices, "
            f"but there are {devices.size}"
        )
    return Mesh(devices.reshape(sizes), names, axis_types=(AxisType.Auto,) * len(names))


def check_rules(rules: Sequence[tuple[str, object]], mesh: Mesh) -> None:
    for logical, target in rules:
        for axis in _as_tuple(target):
            if axis not in mesh.axis_names:
                raise ValueError(
                    f"sharding rule {logical!r} -> {axis!r} names an axis that is not in the "
                    f"mesh {mesh.axis_names}"
                )


def _as_tuple(target) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    rules: Sequence[tuple[str, object]],
    mesh: Mesh,
) -> PartitionSpec:
    """PartitionSpec of an array with these logical axes; each mesh axis used at most once."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape, strict=True):
        axes = tuple(a for a in _as_tuple(table.get(name)) if a not in used)
        total = math.prod(mesh.shape[a] for a in axes)
        if not axes or total == 1:
            spec.append(None)
            continue
        if size % total:
            log.debug("replicating %s (size %d) over %s: not divisible", name, size, axes)
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
    """Where activations live: a mesh and the logical-axis rules (hashable, so it can be a
    static attribute of a model and part of a jitted function's cache key)."""

    mesh: Mesh
    rules: tuple[tuple[str, object], ...] = DEFAULT_RULES

    def __post_init__(self) -> None:
        rules = tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in self.rules)
        object.__setattr__(self, "rules", rules)
        check_rules(rules, self.mesh)

    def spec(self, shape: Sequence[int], axes: Sequence[str | None]) -> NamedSharding:
        return NamedSharding(self.mesh, logical_to_spec(axes, shape, self.rules, self.mesh))

    def constrain(self, x: jax.Array, *axes: str | None) -> jax.Array:
        """`x` constrained to the sharding its logical `axes` map to."""
        if len(axes) != x.ndim:
            raise ValueError(f"{len(axes)} logical axes {axes} for an array of shape {x.shape}")
        return jax.lax.with_sharding_constraint(x, self.spec(x.shape, axes))


def constrain(x: jax.Array, where: ActivationSharding | None, *axes: str | None) -> jax.Array:
    """`x` unchanged without a mesh; else constrained to its logical axes' sharding."""
    return x if where is None else where.constrain(x, *axes)


def state_shardings(state: nnx.State, rules, mesh: Mesh) -> nnx.State:
    """NamedShardings for every variable of `state`, from its `logical_axes` metadata."""
    check_rules(rules, mesh)

    def sharding(var):
        axes = var.get_metadata("logical_axes", None) if isinstance(var, nnx.Variable) else None
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        if axes is None or len(axes) != len(value.shape):
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, logical_to_spec(axes, value.shape, rules, mesh))

    return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batches are split over the data-parallel axes (data and fsdp) present in the mesh."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble the global batch from each process's rows (its share of the batch)."""
    out = {}
    for key, value in local.items():
        rows = value.shape[0] * jax.process_count()
        if rows % data_parallel_size(mesh):
            raise ValueError(
                f"global batch of {rows} rows is not divisible by the data-parallel size "
                f"{data_parallel_size(mesh)} (mesh {dict(mesh.shape)})"
            )
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
    return out


def host_value(x: jax.Array) -> np.ndarray:
    """A replicated array's value on this host (works when other processes hold copies)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(x.addressable_data(0))


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """`jax.distributed.initialize` from arguments or the environment.

    On TPU pods and Slurm/GPU clusters JAX finds everything itself (call with no
    arguments); on CPU (tests, two local processes) the collectives use gloo.
    """
    coordinator = coordinator or os.environ.get("PREFIX_JAX_COORDINATOR")
    if num_processes is None and os.environ.get("PREFIX_JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["PREFIX_JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("PREFIX_JAX_PROCESS_ID"):
        process_id = int(os.environ["PREFIX_JAX_PROCESS_ID"])
    if jax.config.jax_platforms in (None, "", "cpu") and coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
