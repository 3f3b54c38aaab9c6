"""File writing every layer shares: no reader ever sees half a file.

A base module (like `scale.sharding`): it imports nothing from the project, so data,
methods, train, serve and study may all use it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(temporary)` beside `path`, then rename it over `path`: a killed run leaves
    the old file or the new one, never half of one (a rename is atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
