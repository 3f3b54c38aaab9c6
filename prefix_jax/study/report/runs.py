"""Reading a sweep's runs: each trial directory's records, the planned trials in
`sweep.json`, and the launcher's log (`launch.jsonl`) of commits, machines and times.

A trial is read whatever state it is in (finished, failed, interrupted, still running, or
planned but never started: "missing"), so the report can list every one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefix_jax.metrics.bleu import bleu_segment_stats

DEFAULT_SEED_KEYS = ("seed", "prefix.seed")
CI_METRIC = "BLEU"
BLEU_MAX_N = 4
SUMMARY_FIELDS = ("eval_loss", "final_train_loss", "params_trainable", "params_total")
TIME_FIELDS = ("wall_s", "decode_s")


def _load_json(path: Path) -> Any:
    """Parsed JSON, or None if the file is missing or unreadable (a trial still running)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _scalar(value: Any) -> Any:
    """Override values as hashable scalars (a hand-written trial.json may hold lists)."""
    return (
        value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)
    )


def read_loss_curve(path: Path, key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of `key` from metrics.jsonl, sorted, last value per step (a
    resumed run may log a step twice)."""
    points: dict[int, float] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interruption
        value = _number(row.get(key)) if isinstance(row, dict) else None
        if value is not None and isinstance(row.get("step"), int):
            points[row["step"]] = value
    return sorted(points.items())


def read_bleu_stats(path: Path) -> tuple[list[str], np.ndarray] | None:
    """(sources, per-source BLEU statistics [n_sources, 2 * 4 + 2]) of an evaluate run's
    predictions.jsonl, or None if it is missing or unreadable."""
    if not path.exists():
        return None
    sources, hypotheses, references = [], [], []
    try:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                sources.append(row["source"])
                hypotheses.append(row["prediction"])
                references.append(row["references"])
        stats = bleu_segment_stats(hypotheses, references, BLEU_MAX_N)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sources, np.asarray(stats, dtype=np.float64)


def read_trial(tdir: Path, split: str = "validation") -> dict:
    """One trial's record: status, overrides, metrics, summary numbers, error, loss curve."""
    info = _load_json(tdir / "trial.json") or {}
    summary = _load_json(tdir / "train_summary.json") or {}
    results = _load_json(tdir / f"eval_{split}" / "results.json")
    failed = tdir / "FAILED"
    if results is not None:
        status = "finished"
    elif failed.exists():
        status = "failed"
    else:
        status = "incomplete"
    error = ""
    if status == "failed":
        lines = failed.read_text(errors="replace").splitlines()
        error = next(
            (ln[7:] for ln in lines if ln.startswith("error: ")), lines[0] if lines else ""
        )
    metrics = {k: _number(v) for k, v in ((results or {}).get("metrics") or {}).items()}
    record = {
        "name": tdir.name,
        "dir": str(tdir),
        "status": status,
        # A directory not made by the launcher is its own setting.
        "overrides": {k: _scalar(v) for k, v in info.get("overrides", {"run": tdir.name}).items()},
        "seed_keys": info.get("seed_keys"),
        "metrics": metrics,
        "steps": summary.get("steps"),
        "decode_s": _number((results or {}).get("decode_s")),
        "error": error,
        "loss_curve": read_loss_curve(tdir / "metrics.jsonl"),
        "bleu_stats": None,
    }
    if status == "finished" and metrics.get(CI_METRIC) is not None:
        record["bleu_stats"] = read_bleu_stats(tdir / f"eval_{split}" / "predictions.jsonl")
    for key in (*SUMMARY_FIELDS, "wall_s"):
        record[key] = _number(summary.get(key))
    record["accelerator"] = summary.get("device_kind") or summary.get("platform")
    return record


def collect(root: str | Path, split: str = "validation") -> tuple[list[dict], dict]:
    """All trials under `root` (plus 'missing' ones planned in sweep.json) and sweep info."""
    root = Path(root)
    sweep = _load_json(root / "sweep.json") or {}
    markers = ("trial.json", "config.json", "FAILED")
    dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and any((d / m).exists() for m in markers)
    )
    trials = [read_trial(d, split) for d in dirs]
    seen = {t["name"] for t in trials}
    for planned in sweep.get("trials", []):
        if planned["name"] not in seen:
            trials.append(
                {
                    "name": planned["name"],
                    "dir": str(root / planned["name"]),
                    "status": "missing",
                    "overrides": planned["overrides"],
                    "seed_keys": sweep.get("seed_keys"),
                    "metrics": {},
                    "error": "",
                    "loss_curve": [],
                    "bleu_stats": None,
                }
            )
    # The sweep's order (it fixes the order of non-numeric values in tables and plots).
    planned_order = {t["name"]: i for i, t in enumerate(sweep.get("trials", []))}
    trials.sort(key=lambda t: planned_order.get(t["name"], len(planned_order)))
    return trials, sweep


def seed_keys_of(trials: Sequence[dict], sweep: dict) -> list[str]:
    """Keys averaged over: what the launcher recorded, else the default seed keys."""
    keys: list[str] = []
    for source in [*(t.get("seed_keys") for t in trials), sweep.get("seed_keys")]:
        keys += [k for k in source or [] if k not in keys]
    return keys or list(DEFAULT_SEED_KEYS)


def commit_label(launch: dict | None) -> str:
    """`abc123def456`, with `+dirty` when tracked files differed; `not recorded` for trials
    started by a launcher that did not log its commit."""
    if launch is None:
        return "not recorded"
    label = (launch.get("commit") or "unknown")[:12]
    return label + ("+dirty" if launch.get("dirty") else "")


def read_launch_log(root: Path) -> tuple[list[dict], dict[str, dict]]:
    """The launcher's `launch` events (command, commit, machine; `ran` where it started or
    submitted a trial, `jobs`: the SkyPilot job ids it submitted), and per trial the commits
    its starts ran at and the seconds of its completed commands (`launch.jsonl`)."""
    launches: list[dict] = []
    per_trial: dict[str, dict] = {}
    path = root / "launch.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    current = None
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed launcher
        kind = event.get("event")
        if kind == "launch":
            launches.append(event)
            current = event
            continue
        if "trial" not in event:
            continue
        record = per_trial.setdefault(event["trial"], {"commits": [], "seconds": {}})
        if kind == "submitted" and current is not None:  # a SkyPilot managed job
            current.setdefault("jobs", []).append(event.get("job_id"))
        if kind in ("started", "submitted"):
            if current is not None:
                current["ran"] = True  # marks launches that did work, apart from no-op relaunches
            if commit_label(current) not in record["commits"]:
                record["commits"].append(commit_label(current))
        elif kind == "step":
            record["seconds"][event.get("step")] = _number(event.get("seconds"))
    return launches, per_trial


def add_provenance(trials: Sequence[dict], per_trial: dict[str, dict]) -> None:
    """Each trial's `commit` and `compute_s`: the seconds of its train and evaluate commands
    where the launcher logged them, else training wall time plus decoding time."""
    for t in trials:
        logged = per_trial.get(t["name"], {"commits": [], "seconds": {}})
        t["commits"] = logged["commits"] or ["not recorded"]
        seconds = logged["seconds"]
        if t["status"] != "finished":
            t["compute_s"] = None
        elif seconds.get("train") is not None and seconds.get("evaluate") is not None:
            t["compute_s"] = seconds["train"] + seconds["evaluate"]
        else:
            parts = [t.get("wall_s"), t.get("decode_s")]
            t["compute_s"] = None if None in parts else sum(parts)
