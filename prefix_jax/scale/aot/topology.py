"""The device slices the AOT check compiles for: TPU slices by Google's names, or CPU devices.

A TPU slice's devices are abstract (`jax.experimental.topologies`, as MaxText's
`train_compile.py`): libtpu's compiler targets them from any machine, no TPU attached.
"""

from __future__ import annotations

import dataclasses

import jax

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Topology:
    """A device slice to compile for. `hbm_bytes` is per chip (None: not a TPU)."""

    name: str
    platform: str  # "tpu" | "cpu"
    chips: int
    topology_name: str = ""
    chip_config: str = "default"
    hbm_bytes: int | None = None


def _tpu(name: str, topology_name: str, chips: int, hbm_gib: float, megacore: bool) -> Topology:
    return Topology(
        name=name,
        platform="tpu",
        chips=chips,
        topology_name=topology_name,
        chip_config="megacore" if megacore else "default",
        hbm_bytes=int(hbm_gib * GiB),
    )


# Google's slice names: v5e-N and v6e-N have N chips; v4-N and v5p-N count TensorCores,
# two per chip (Cloud TPU system architecture docs; MaxText's accelerator_to_spec_map).
# HBM per chip: v5e 16 GiB, of which the runtime lets XLA use 15.75; v4 32; v5p 95; v6e 32.
TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        _tpu("v5e-4", "v5e:2x2", 4, 15.75, False),
        _tpu("v5e-8", "v5e:2x4", 8, 15.75, False),
        _tpu("v5e-16", "v5e:4x4", 16, 15.75, False),
        _tpu("v5e-64", "v5e:8x8", 64, 15.75, False),
        _tpu("v5e-256", "v5e:16x16", 256, 15.75, False),
        _tpu("v4-8", "v4:2x2x1", 4, 32, True),
        _tpu("v5p-8", "v5:2x2x1", 4, 95, True),
        _tpu("v5p-16", "v5:2x2x2", 8, 95, True),
        _tpu("v5p-32", "v5:2x2x4", 16, 95, True),
        _tpu("v5p-128", "v5:4x4x4", 64, 95, True),
        _tpu("v5p-256", "v5:4x4x8", 128, 95, True),
        _tpu("v5p-512", "v5:4x8x8", 256, 95, True),
        _tpu("v6e-256", "v6e:16x16", 256, 32, False),
    )
}


def topology(name: str) -> Topology:
    """A known TPU slice (`v5e-256`, ...) or `cpu-N` (N devices of this process)."""
    if name in TOPOLOGIES:
        return TOPOLOGIES[name]
    if name.startswith("cpu-") and name[4:].isdigit() and int(name[4:]) > 0:
        return Topology(name=name, platform="cpu", chips=int(name[4:]))
    raise ValueError(
        f"unknown topology {name!r}; known: {', '.join(TOPOLOGIES)}, or cpu-N for N CPU devices"
    )


def devices(topo: Topology) -> list:
    """The (abstract, for TPU) devices of `topo`; TPU needs libtpu installed."""
    if topo.platform == "cpu":
        available = jax.devices("cpu")
        if len(available) < topo.chips:
            raise ValueError(
                f"{topo.name} needs {topo.chips} CPU devices but this process has "
                f"{len(available)}: set jax.config.update('jax_num_cpu_devices', {topo.chips}) "
                "before JAX starts"
            )
        return available[: topo.chips]
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - part of jax
        raise RuntimeError("jax.experimental.topologies is unavailable") from e
    try:
        desc = topologies.get_topology_desc(
            topology_name=topo.topology_name,
            platform="tpu",
            chip_config_name=topo.chip_config,
            chips_per_host_bounds=(2, 2, 1),
            num_slices=1,
        )
    except Exception as e:  # libtpu missing or too old: say how to get it
        raise RuntimeError(
            f"cannot build TPU topology {topo.topology_name!r} ({e}); the TPU compiler comes "
            "with libtpu: pip install -e '.[tpu]'"
        ) from e
    found = list(desc.devices)
    if len(found) != topo.chips:
        raise RuntimeError(f"{topo.topology_name} gave {len(found)} devices, not {topo.chips}")
    return found
