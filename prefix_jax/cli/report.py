"""`prefix-jax report ROOT`: a sweep's tables, plots and report.md, and the Markdown printed.

    prefix-jax report runs/pl [--metric BLEU] [--split validation] [--out DIR]
        [--bootstrap 1000] [--select optim.learning_rate]

What each output holds: `prefix_jax.study.report`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from prefix_jax.study.bootstrap import SAMPLES as BOOTSTRAP_SAMPLES
from prefix_jax.study.report import write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefix-jax report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", help="sweep directory (the launcher's --workdir)")
    parser.add_argument("--out", help="output directory (default: the sweep directory)")
    parser.add_argument("--metric", default="BLEU", help="metric to plot (default: BLEU)")
    parser.add_argument("--split", default="validation", help="evaluated split to read")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP_SAMPLES,
        help=f"resamples for the BLEU interval over sources (default {BOOTSTRAP_SAMPLES}; 0: none)",
    )
    parser.add_argument(
        "--select",
        default="optim.learning_rate",
        help="key to choose per setting by lowest validation loss ('' for none)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the report and print its Markdown and the files written."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    try:
        written = write_report(
            args.root,
            args.out,
            metric=args.metric,
            split=args.split,
            bootstrap=args.bootstrap,
            select=args.select or None,
            command=shlex.join(["prefix-jax", "report", *argv]),
        )
    except FileNotFoundError as e:
        parser.error(str(e))
    print(written["report_md"].read_text())
    for key, path in written.items():
        if key != "report_md":
            print(f"wrote {path}")
    return 0
