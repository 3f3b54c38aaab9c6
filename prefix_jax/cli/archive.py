"""`prefix-jax archive ROOT OUT.tar.gz`: pack a sweep's results (not its checkpoints).

    prefix-jax archive runs/low_data experiments/results/low_data/trials.tar.gz

What the archive holds: `prefix_jax.study.archive`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefix_jax.study.archive import archive


def main(argv: list[str] | None = None) -> int:
    """Write the archive and say how many files and KiB it holds."""
    parser = argparse.ArgumentParser(
        prog="prefix-jax archive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("root", help="sweep directory (the launcher's --workdir)")
    parser.add_argument("out", help="archive to write, e.g. experiments/results/NAME/trials.tar.gz")
    args = parser.parse_args(argv)
    try:
        files = archive(args.root, args.out)
    except FileNotFoundError as e:
        parser.error(str(e))
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {len(files)} files, {size / 1024:.0f} KiB")
    return 0
