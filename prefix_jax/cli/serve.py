r"""Batch inference: one base model, many prefixes, requests as JSON lines.

    prefix-jax serve --model smollm2 --prefix e2e=runs/e2e/export \
        --prefix webnlg=runs/webnlg/export --input requests.jsonl --output out.jsonl

Each line is `{"id", "task", "input"}` plus optional decoding options (the flags below
give their defaults); `task` names a `--prefix`, `null` or `"base"` is the base model. The
request and record formats are `prefix_jax.serve.batch`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prefix_jax.files import atomic_write
from prefix_jax.serve.batch import Server
from prefix_jax.serve.requests import DecodeOptions, RequestError


def _parse_prefix(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--prefix wants NAME=DIR, got {spec!r}")
    return name, path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="HF directory, .gguf file or name")
    parser.add_argument(
        "--prefix",
        action="append",
        default=[],
        type=_parse_prefix,
        metavar="NAME=DIR",
        help="an exported prefix (ours or PEFT) served as task NAME; repeat for more",
    )
    parser.add_argument("--input", required=True, help="requests, JSON lines ('-' = stdin)")
    parser.add_argument("--output", required=True, help="records, JSON lines ('-' = stdout)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-input-tokens", type=int, default=512)
    parser.add_argument("--dtype", default="float32", help="compute dtype")
    parser.add_argument("--tokens", action="store_true", help="add generated token ids")
    defaults = DecodeOptions()
    group = parser.add_argument_group("decoding defaults (a request may override them)")
    group.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    group.add_argument("--beam-size", type=int, default=defaults.beam_size, help="1 = greedy")
    group.add_argument("--min-new-tokens", type=int, default=defaults.min_new_tokens)
    group.add_argument("--length-penalty", type=float, default=defaults.length_penalty)
    group.add_argument("--ban-newline", action="store_true")
    args = parser.parse_args(argv)

    names = [name for name, _ in args.prefix]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        parser.error(f"task names given twice: {', '.join(duplicates)}")
    defaults = DecodeOptions(
        max_new_tokens=args.max_new_tokens,
        beam_size=args.beam_size,
        min_new_tokens=args.min_new_tokens,
        length_penalty=args.length_penalty,
        ban_newline=args.ban_newline,
    )
    try:
        defaults.check(max(1024, defaults.max_new_tokens), max(16, defaults.beam_size))
    except RequestError as e:
        parser.error(str(e))

    start = time.perf_counter()
    server = Server.load(
        args.model,
        dict(args.prefix),
        dtype=args.dtype,
        defaults=defaults,
        batch_size=args.batch_size,
        max_input_tokens=args.max_input_tokens,
        max_new_tokens_limit=max(1024, defaults.max_new_tokens),
        max_beam_size=max(16, defaults.beam_size),
    )
    print(
        f"loaded {args.model} and {len(server.registry)} prefixes "
        f"({server.registry.nbytes / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f}s",
        file=sys.stderr,
    )
    with contextlib.ExitStack() as stack:
        source = (
            sys.stdin
            if args.input == "-"
            else stack.enter_context(open(args.input, encoding="utf-8"))
        )
        records = server.serve_lines(source, progress=True, return_tokens=args.tokens)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda p: p.write_text(text, encoding="utf-8"))
    s = server.last_stats
    errors = sum("error" in r for r in records)
    print(
        f"{len(records)} records ({errors} errors), {s.get('steps', 0)} engine steps, "
        f"{s.get('generated_tokens', 0)} tokens in {s.get('decode_s', 0.0):.1f}s "
        f"({s.get('tokens_per_s', 0.0):.0f} tok/s, compilation included)",
        file=sys.stderr,
    )
    return 0
