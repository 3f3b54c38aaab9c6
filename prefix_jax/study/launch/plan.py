"""A sweep's trials as plans: each trial's directory, its train and evaluate commands, and
the record it leaves in `trial.json`. Nothing here runs anything; backends do."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path

from prefix_jax.study.sweep import Point, Sweep, Trial, format_value

# The checkout this package runs from: its commit is the code's provenance, and its config
# files stand in for repository-relative config paths launched from another directory.
REPO_ROOT = Path(__file__).resolve().parents[3]
CLI_MODULE = "prefix_jax.cli"


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of a trial; it is skipped when `marker` (relative to the trial) exists."""

    name: str
    argv: list[str]
    marker: str | None


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """A trial ready to launch: where it runs, what it runs, what it records in trial.json."""

    trial: Trial
    dir: Path
    steps: list[Step]
    record: dict
    done: str | None  # relative path whose existence means "finished"; None: unknown here


def train_argv(python: Sequence[str], config: str, workdir: Path, overrides: Point) -> list[str]:
    """`python -m prefix_jax.cli train --config=... --workdir=... --config.k=v ...`."""
    flags = [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]
    paths = [f"--config={config}", f"--workdir={workdir}"]
    return [*python, "-m", CLI_MODULE, "train", *paths, *flags]


def eval_argv(python: Sequence[str], workdir: Path, split: str) -> list[str]:
    """`python -m prefix_jax.cli evaluate --workdir ... --split ...`."""
    return [*python, "-m", CLI_MODULE, "evaluate", "--workdir", str(workdir), "--split", split]


def plan_trials(
    sweep: Sweep,
    workdir: str | Path,
    *,
    python: Sequence[str],
    global_overrides: Point | None = None,
    seeds: Sequence[int] | None = None,
    only: str | None = None,
    split: str = "validation",
    config: str | None = None,
) -> list[TrialPlan]:
    """Every trial's directory and train/evaluate commands. Overrides apply in the order
    config file < sweep base overrides < `global_overrides` (`--set`) < the trial's own grid
    point; `only` is a regex on trial names, `config` replaces the sweep's config path."""
    global_overrides = dict(global_overrides or {})
    trials = sweep.trials(seeds)
    grid_keys = {k for t in trials for k in t.overrides}
    clash = grid_keys & global_overrides.keys()
    if clash:
        raise ValueError(f"--set {sorted(clash)} would overwrite the sweep's own axis")
    if only:
        trials = [t for t in trials if re.search(only, t.name)]
    config = config or sweep.config
    plans = []
    for trial in trials:
        tdir = Path(workdir) / trial.name
        overrides = {**sweep.base_overrides, **global_overrides, **trial.overrides}
        trial_config = resolve_config(config, overrides)
        record = {
            "sweep": sweep.name,
            "trial": trial.name,
            "config": resolve_config(sweep.config, overrides),
            "overrides": trial.overrides,
            "seed_keys": list(sweep.seed_keys),
            "base_overrides": sweep.base_overrides,
            "global_overrides": global_overrides,
        }
        done = f"eval_{split}/results.json"
        steps = [
            Step("train", train_argv(python, trial_config, tdir, overrides), "train_summary.json"),
            Step("evaluate", eval_argv(python, tdir, split), done),
        ]
        plans.append(TrialPlan(trial, tdir, steps, record, done))
    return plans


def trial_state(plan: TrialPlan) -> str:
    """'finished', 'failed' (FAILED present), 'interrupted' (directory exists) or 'new'."""
    if plan.done is not None and (plan.dir / plan.done).exists():
        return "finished"
    if (plan.dir / "FAILED").exists():
        return "failed"
    return "interrupted" if plan.dir.exists() else "new"


def write_sweep_json(root: Path, sweep: Sweep, plans: Sequence[TrialPlan], sets: Point) -> None:
    """`<workdir>/sweep.json`: every planned trial, so the report can list missing ones.
    Trials from earlier launches (e.g. other `--only` subsets) are kept."""
    path = root / "sweep.json"
    trials: dict[str, Point] = {}
    if path.exists():
        trials = {t["name"]: t["overrides"] for t in json.loads(path.read_text())["trials"]}
    trials.update({p.trial.name: p.trial.overrides for p in plans})
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "sweep": sweep.name,
        "config": sweep.config,
        "seed_keys": list(sweep.seed_keys),
        "base_overrides": sweep.base_overrides,
        "global_overrides": sets,
        "trials": [{"name": k, "overrides": v} for k, v in trials.items()],
        "contrasts": [c.as_json() for c in sweep.contrasts],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)\}")


def resolve_config(config: str, overrides: Point) -> str:
    """Fill `{key}` placeholders of a sweep's config path from the trial's overrides, so
    that e.g. `configs/e2e.py:method={method}` gives each method its own config."""

    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in overrides:
            raise ValueError(f"config {config!r} names {{{key}}}, which the trial does not set")
        return format_value(overrides[key])

    return _PLACEHOLDER.sub(value, config)


def local_config(config: str) -> str:
    """Make a repo-relative config path (or path template) work from any current directory."""
    path, sep, arg = config.partition(":")
    directory = Path(path).parent
    if not Path(path).is_absolute() and not directory.is_dir() and (REPO_ROOT / directory).is_dir():
        return str(REPO_ROOT / path) + sep + arg
    return config
