r"""Serve one base model and many prefixes: an OpenAI-compatible HTTP server, or a batch
of JSON-lines requests.

    prefix-jax serve --model smollm2 --prefix e2e=runs/e2e/export --port 8000
    prefix-jax serve --model smollm2 --prefix e2e=runs/e2e/export \
        --prefix webnlg=runs/webnlg/export --input requests.jsonl --output out.jsonl

HTTP (without --input): `model` in a request names a `--prefix` or the base model
(`--served-model-name`, by default `--model`); endpoints in `prefix_jax.serve.openai_api` and
docs/serving.md. Batch (--input and --output): each line is `{"id", "task", "input"}` plus
optional decoding options (the flags below give their defaults); `task` names a `--prefix`,
`null` or `"base"` is the base model. The request and record formats are
`prefix_jax.serve.batch`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
    parser.add_argument("--input", help="batch mode: requests, JSON lines ('-' = stdin)")
    parser.add_argument("--output", help="batch mode: records, JSON lines ('-' = stdout)")
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
    _add_http_arguments(parser)
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
    if args.input is None and args.output is None:
        return _serve_http(args, parser)
    if args.input is None or args.output is None:
        parser.error("batch mode needs both --input and --output (neither: the HTTP server)")

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


def _add_http_arguments(parser: argparse.ArgumentParser) -> None:
    http = parser.add_argument_group("HTTP server (the mode without --input/--output)")
    http.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    http.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    http.add_argument("--served-model-name", help="the base model's `model` name (--model)")
    http.add_argument(
        "--api-key",
        default=os.environ.get("PREFIX_JAX_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1/ (default $PREFIX_JAX_API_KEY)",
    )
    http.add_argument(
        "--prefix-root", help="allow /v1/load_prefix, from directories under this one only"
    )
    http.add_argument("--slots", type=int, default=8, help="requests decoded at once")
    http.add_argument("--max-len", type=int, default=512, help="slot length in tokens")
    http.add_argument("--max-waiting", type=int, default=64, help="queue length before 429")
    http.add_argument("--prefix-capacity", type=int, default=16, help="prefixes held at once")
    http.add_argument("--prefix-max-length", type=int, default=64, help="longest prefix")
    http.add_argument(
        "--buckets",
        type=int,
        nargs="+",
        help="prompt lengths a prefill pads to, one program each (default: powers of two "
        "from 16 below --max-len, and --max-len - 1)",
    )
    http.add_argument(
        "--beam-sizes",
        type=int,
        nargs="*",
        default=[],
        help="beam widths a request may ask for as `best_of` (each compiles a program)",
    )


def _serve_http(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Build the engine (every program compiled), load the prefixes, serve until stopped."""
    from prefix_jax.models import load
    from prefix_jax.serve.engine import Engine, PrefixLoadError
    from prefix_jax.serve.openai_api import create_app, run_server
    from prefix_jax.train import assemble as experiment

    if args.prefix_root is not None and not Path(args.prefix_root).is_dir():
        parser.error(f"--prefix-root {args.prefix_root} is not a directory")
    missing = [f"{name}={path}" for name, path in args.prefix if not Path(path).is_dir()]
    if missing:  # before minutes of loading and compiling
        parser.error(f"--prefix directories not found: {', '.join(missing)}")
    start = time.perf_counter()
    served = args.served_model_name or args.model
    model, tokenizer = load(args.model, dtype=experiment.dtype(args.dtype))
    try:
        engine = Engine(
            model,
            tokenizer,
            slots=args.slots,
            max_len=args.max_len,
            prefix_capacity=args.prefix_capacity,
            prefix_max_length=args.prefix_max_length,
            max_waiting=args.max_waiting,
            buckets=args.buckets,
            beam_sizes=args.beam_sizes,
            base_name=served,
            prefixes=dict(args.prefix),
        )
    except (PrefixLoadError, ValueError) as e:
        parser.error(str(e))
    app = create_app(
        engine,
        served_model_name=served,
        api_key=args.api_key,
        prefix_root=args.prefix_root,
    )
    print(
        f"loaded {args.model} and {len(args.prefix)} prefixes, compiled {args.slots} slots "
        f"of {args.max_len} tokens in {time.perf_counter() - start:.1f}s",
        file=sys.stderr,
    )

    def ready(url: str) -> None:
        print(f"serving {url}/v1 (OpenAI API), {url}/metrics", flush=True)

    run_server(app, args.host, args.port, ready)
    return 0
