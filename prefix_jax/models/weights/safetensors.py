"""Safetensors files read as memory maps: a tensor is read only when a slice is asked for."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from prefix_jax.models.weights.base import CheckpointError


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
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
