"""Sweeps as data: each grid file `experiments/sweeps/<name>.py` defines `get_sweep() -> Sweep`.

A grid is a plain list of override dicts such as `{"prefix.length": 5, "prefix.reparam": "mlp"}`
whose keys are config paths, passed to training as `--config.<key>=<value>`. It is built with
four helpers, so a sweep file reads like the experiment it describes:

    product(sweep("prefix.length", [1, 5, 10]), sweep("prefix.reparam", ["none", "mlp"]))
    zip_(sweep("optim.learning_rate", [1e-4, 5e-5]), sweep("epochs", [5, 10]))
    chain(sweep("method", ["prefix"]), product(sweep("method", ["lora"]), ...))

Seeds are an axis of their own (`Sweep.seeds`), kept out of the grid so that the launcher can
change them (`--seeds 0,1,2`) and the report can average over them. Trial names are built
from a trial's overrides, so they are stable across reruns and need no bookkeeping.

Grid files are read by path (`load_sweep`), a bare name from `experiments/sweeps/` under the
current directory; they import this module for the API and their neighbours relatively.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.machinery
import importlib.util
import itertools
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from prefix_jax.methods import registry

Value = bool | int | float | str
Point = dict[str, Value]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")
MAX_NAME = 120
# The shipped grids, relative to the directory the command runs in (the repository root).
SWEEPS_DIR = Path("experiments/sweeps")
# Seed keys for sweeps across methods: each method's own init seed follows the trial seed.
METHOD_SEED_KEYS = registry.seed_keys()


def sweep(key: str, values: Iterable[Value]) -> list[Point]:
    """One axis: `[{key: v} for v in values]`."""
    _check_key(key)
    points = []
    for value in values:
        if not isinstance(value, bool | int | float | str):
            raise TypeError(f"{key}: override values must be bool/int/float/str, got {value!r}")
        points.append({key: value})
    if not points:
        raise ValueError(f"sweep({key!r}) has no values")
    return points


def product(*axes: Sequence[Point]) -> list[Point]:
    """Cartesian product of axes; the last axis varies fastest. Axes may not share keys."""
    return [_merge(combo, "product") for combo in itertools.product(*axes)]


def zip_(*axes: Sequence[Point]) -> list[Point]:
    """Axes varied together (i-th point of each merged); all axes must have the same length."""
    lengths = {len(axis) for axis in axes}
    if len(lengths) > 1:
        raise ValueError(f"zip_(): axes have different lengths {sorted(lengths)}")
    return [_merge(combo, "zip_") for combo in zip(*axes, strict=True)]


def chain(*axes: Sequence[Point]) -> list[Point]:
    """Concatenation of axes: for sub-grids that differ per setting (e.g. lr per method)."""
    return [dict(point) for axis in axes for point in axis]


def _merge(points: Sequence[Point], who: str) -> Point:
    merged: Point = {}
    for point in points:
        clash = merged.keys() & point.keys()
        if clash:
            raise ValueError(f"{who}(): axes share keys {sorted(clash)}")
        merged.update(point)
    return merged


def format_value(value: Value) -> str:
    """How a value is written on the command line (`--config.key=<this>`) and in names."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form: 8e-05, 0.1
    return str(value)


def setting_label(point: Point) -> str:
    """`k=v,...` of a setting, values as the command line writes them."""
    return ",".join(f"{k}={format_value(v)}" for k, v in point.items())


def seed_of(overrides: Point, seed_keys: Sequence[str]) -> Value | None:
    """A trial's seed: the value of the first seed key its overrides set."""
    return next((overrides[k] for k in seed_keys if k in overrides), None)


def trial_name(overrides: Point) -> str:
    """A stable, unique, filesystem-safe directory name such as `prefix.length=5,seed=0`.

    Characters outside [A-Za-z0-9._,=+-] become `_`; when that loses information (or the name
    is long) a short hash of the exact overrides is appended, so distinct trials never collide.
    """
    raw = setting_label(overrides)
    safe = _UNSAFE.sub("_", raw)
    if safe != raw or len(safe) > MAX_NAME:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        safe = f"{safe[: MAX_NAME - 10]}-{digest}"
    return safe or "default"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run of a sweep: its directory name and the overrides that distinguish it."""

    name: str
    overrides: Point


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A yes/no question a sweep answers: is setting `a` ahead of setting `b`?

    `a` and `b` are partial settings (`{"method": "full"}`) that pick one setting each among
    the sweep's trials; `within` names keys on which the two are paired value by value (e.g.
    `("data.train_examples",)`: each training-set size is compared with itself, and the
    mean difference over sizes is reported too). The report answers it with a paired
    bootstrap interval of the BLEU difference (`prefix_jax.study.report.contrasts`).
    """

    question: str
    a: Point
    b: Point
    within: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.a or not self.b or self.a == self.b:
            raise ValueError(f"contrast {self.question!r}: a and b must be distinct settings")
        for key in [*self.a, *self.b, *self.within]:
            _check_key(key)
        fixed = set(self.within) & (set(self.a) | set(self.b))
        if fixed:
            raise ValueError(
                f"contrast {self.question!r}: {sorted(fixed)} both paired on and fixed by a or b"
            )

    def as_json(self) -> dict:
        return {"question": self.question, "a": self.a, "b": self.b, "within": list(self.within)}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A named grid of config overrides on top of one config file.

    `config` is a config path as `--config` takes it (`configs/e2e.py:local`); it may
    name a trial's override in braces (`configs/e2e.py:method={method}`) to pick per trial;
    `base_overrides` apply to every trial without naming it (data paths and the like);
    `seeds` are crossed with the grid and every key in `seed_keys` gets the seed (data order
    and prefix init both vary). `note` is printed by the launcher (e.g. missing features);
    `contrasts` are the questions the report answers from the trials (`Contrast`).
    """

    name: str
    config: str
    grid: list[Point]
    seeds: tuple[int, ...] = (0,)
    seed_keys: tuple[str, ...] = ("seed", "prefix.seed")
    base_overrides: Point = dataclasses.field(default_factory=dict)
    note: str = ""
    contrasts: tuple[Contrast, ...] = ()

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError(f"sweep {self.name!r}: empty grid (use [{{}}] for a single trial)")
        for key in [*self.seed_keys, *self.base_overrides]:
            _check_key(key)
        for point in self.grid:
            for key in point:
                _check_key(key)
            seeded = set(point) & set(self.seed_keys)
            if seeded and self.seeds:
                raise ValueError(
                    f"sweep {self.name!r}: {sorted(seeded)} set in the grid; use Sweep(seeds=...)"
                )
        swept = {key for point in self.grid for key in point}
        for contrast in self.contrasts:
            unknown = {*contrast.a, *contrast.b, *contrast.within} - swept
            if unknown:
                raise ValueError(
                    f"sweep {self.name!r}: contrast {contrast.question!r} names {sorted(unknown)}, "
                    "which no grid point sets"
                )

    def trials(self, seeds: Sequence[int] | None = None) -> list[Trial]:
        """Every (seed, grid point) trial, seed outermost so that seed 0 of all points runs
        first; names list the grid keys, then the first seed key."""
        seeds = self.seeds if seeds is None else tuple(seeds)
        seed_points = [{k: s for k in self.seed_keys} for s in seeds] or [{}]
        trials, seen = [], {}
        for seed_point in seed_points:
            for point in self.grid:
                overrides = {**point, **seed_point}
                # Every seed key holds the same seed: the first one names it.
                name = trial_name({**point, **dict(list(seed_point.items())[:1])})
                if name in seen:
                    raise ValueError(f"sweep {self.name!r}: duplicate trial {name!r}")
                seen[name] = overrides
                trials.append(Trial(name, overrides))
        return trials


def grid_module(path: str | Path) -> ModuleType:
    """The module of a grid file (or of a helper beside it, such as `_study.py`).

    Grid files are data read by path, not an installed package, yet they share helpers
    through relative imports (`from ._study import DATA`). So each folder of grid files is
    imported as a package of its own under a private name made from its absolute path: the
    files of one folder share their helpers' modules (imported once, like any module), and
    two folders never clash.
    """
    path = Path(path)
    if path.suffix != ".py" or not path.is_file():
        raise FileNotFoundError(f"sweep file {path} not found")
    folder = path.resolve().parent
    package = "_prefix_jax_sweeps_" + hashlib.sha1(str(folder).encode()).hexdigest()[:10]
    if package not in sys.modules:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        sys.modules[package] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{package}.{path.stem}")


def load_sweep(spec: str, sweeps_dir: str | Path = SWEEPS_DIR) -> Sweep:
    """The Sweep of a grid file path (`experiments/sweeps/x.py`) or of a bare name (`x`,
    looked up in `sweeps_dir`); the file must define `get_sweep()` returning a Sweep or a
    dict."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec)
    else:
        path = Path(sweeps_dir) / f"{spec}.py"
        if not Path(sweeps_dir).is_dir():
            raise FileNotFoundError(
                f"no sweep {spec!r}: no folder {sweeps_dir} under {Path.cwd()} (run from the "
                "repository root, give the grid file's path, or --sweeps-dir)"
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"no sweep {spec!r} in {sweeps_dir}; shipped: {', '.join(available(sweeps_dir))}"
                " (or give a grid file's path)"
            )
    module = grid_module(path)
    if not hasattr(module, "get_sweep"):
        raise AttributeError(f"{spec} defines no get_sweep()")
    result: Any = module.get_sweep()
    if isinstance(result, dict):
        contrasts = tuple(
            c if isinstance(c, Contrast) else Contrast(**c) for c in result.get("contrasts", ())
        )
        result = Sweep(**{**result, "contrasts": contrasts})
    if not isinstance(result, Sweep):
        raise TypeError(f"{spec}: get_sweep() returned {type(result).__name__}, not a Sweep")
    return result


def available(sweeps_dir: str | Path = SWEEPS_DIR) -> list[str]:
    """Names of the grid files in `sweeps_dir` (helpers, `_*.py`, are not sweeps)."""
    return sorted(p.stem for p in Path(sweeps_dir).glob("*.py") if not p.stem.startswith("_"))


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"bad config key {key!r}: expected dotted names like 'prefix.length'")
