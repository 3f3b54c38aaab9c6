"""The package's imports run one way, down the data flow (docs/layout.md): a module may
import its own room and the rooms below it, never a room above. This keeps the model free
of inference code and leaves no import cycle for a later change to trip over."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prefix_jax"

# Rooms from the bottom up; a room may import rooms of a lower rank only.
RANKS = {
    "scale.sharding": 0,
    "metrics": 0,
    "files": 0,
    "data": 1,
    "models": 2,
    "methods": 3,
    "config": 4,
    "train": 5,
    "infer": 6,
    "serve": 7,
    "scale.aot": 8,  # compiles the train, infer and serve programs
    "study": 8,
    "cli": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str | None:
    inner = module.split(".")[1:]
    for length in (2, 1):
        key = ".".join(inner[:length])
        if key in RANKS:
            return key
    return None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("prefix_jax.")}


def test_every_module_belongs_to_a_room():
    homeless = [
        _module_name(p)
        for p in PACKAGE.rglob("*.py")
        if p.parent != PACKAGE and _room(_module_name(p)) is None and _imports(p)
    ]
    assert not homeless, f"modules outside the rooms of RANKS: {homeless}"


def test_imports_only_go_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        room = _room(module)
        if room is None:
            continue
        for target in sorted(_imports(path)):
            target_room = _room(target)
            if target_room and target_room != room and RANKS[target_room] >= RANKS[room]:
                upward.append(f"{module} ({room}) imports {target} ({target_room})")
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)
