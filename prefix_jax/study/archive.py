"""Pack a sweep's results (not its checkpoints) into one small, reproducible tar.gz.

    prefix-jax archive runs/low_data experiments/results/low_data/trials.tar.gz

A sweep directory holds hundreds of MB of checkpoints and exports; what the report reads
is a few hundred KB per trial. The archive keeps exactly that: `sweep.json` and
`launch.jsonl` at the root and, per trial, `trial.json`, `config.json`,
`train_summary.json`, `metrics.jsonl`, `FAILED`, and every `eval_*/results.json` and
`eval_*/predictions.jsonl` (outputs with their references, from which the report
recomputes the bootstrap intervals). Unpacked, it is a sweep directory again:

    tar xzf trials.tar.gz -C /tmp && prefix-jax report /tmp/low_data

Members are sorted and carry no owner or time, so the same results give the same bytes.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

ROOT_FILES = ("sweep.json", "launch.jsonl")
TRIAL_FILES = ("trial.json", "config.json", "train_summary.json", "metrics.jsonl", "FAILED")
EVAL_FILES = ("results.json", "predictions.jsonl")


def result_files(root: Path) -> list[Path]:
    """The files of `root` that the report reads, relative to it, sorted."""
    found = [Path(name) for name in ROOT_FILES if (root / name).is_file()]
    for tdir in sorted(p for p in root.iterdir() if (p / "trial.json").is_file()):
        found += [p.relative_to(root) for p in sorted(tdir.iterdir()) if p.name in TRIAL_FILES]
        for edir in sorted(tdir.glob("eval_*")):
            found += [(edir / n).relative_to(root) for n in EVAL_FILES if (edir / n).is_file()]
    return found


def archive(root: str | Path, out: str | Path) -> list[Path]:
    """Write `out` (a .tar.gz whose top folder is the sweep's name); returns the members."""
    root, out = Path(root), Path(out)
    if not (root / "sweep.json").is_file() and not any(root.glob("*/trial.json")):
        raise FileNotFoundError(f"{root} holds no sweep (no sweep.json, no trial directories)")
    files = result_files(root)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            data = (root / rel).read_bytes()
            info = tarfile.TarInfo(f"{root.name}/{rel.as_posix()}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buffer.getvalue())
    return files
