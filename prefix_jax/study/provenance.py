"""Where a result came from: the code's commit and the machine that ran it.

The launcher records both in `launch.jsonl` each time it starts, so a study's report can
say which commit and machine produced every trial, even when a sweep ran over several
sessions or machines. Nothing here initializes JAX: on a TPU host the launcher must not
hold the chips its trial processes need (the accelerator a trial ran on is in its
`train_summary.json`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "libtpu")


def git_commit(repo: str | Path) -> dict:
    """`{"commit": sha or None, "dirty": tracked files differ from it}`."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": bool(status.strip())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    """The host: OS, CPU model and count, memory, Python and the JAX stack's versions."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "packages": versions,
    }


def describe_machine(info: dict) -> str:
    """One line for a report: `2 x AMD EPYC, 7.7 GiB, Linux-..., Python 3.11, jax 0.10.2`."""
    packages = ", ".join(f"{k} {v}" for k, v in (info.get("packages") or {}).items())
    parts = [
        f"{info.get('cpus')} x {info.get('cpu')}",
        f"{info.get('memory_gib')} GiB" if info.get("memory_gib") else None,
        info.get("platform"),
        f"Python {info.get('python')}" if info.get("python") else None,
        packages or None,
    ]
    return ", ".join(p for p in parts if p)
