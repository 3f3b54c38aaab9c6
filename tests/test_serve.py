"""Mixed-task serving (the JSON-lines batch mode over the engine): prefix registry, tasks
sharing the engine's steps, errors, the CLI.

A tiny random Llama with the byte tokenizer; prefixes are random tables of different
lengths. The reference for every row is the same request decoded alone with its own
prefix (`ExportedPrefix.to_prefix_kv`) or with no prefix at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import byte_tokenizer, random_prefix, save_tiny_byte_llama

from prefix_jax.cli.serve import main
from prefix_jax.data.tokens import left_pad, pad_id_of
from prefix_jax.infer.decode import beam_search, greedy
from prefix_jax.methods.prefix import artifact as export
from prefix_jax.methods.prefix.artifact import ExportedPrefix, PrefixMismatchError
from prefix_jax.models import load
from prefix_jax.serve.batch import Server
from prefix_jax.serve.engine import Engine
from prefix_jax.serve.prefix_bank import PrefixRegistry, UnknownTaskError
from prefix_jax.serve.requests import DecodeOptions, Request, RequestError

EOS = 256
LENGTHS = {"summarize": 3, "classify": 5, "release": 7}
# Prompts (input + 9-byte separator) fit the 32-token bucket and every test decodes
# N_NEW tokens, so most tests reuse programs compiled by earlier ones.
INPUTS = {
    "summarize": "The parties agree.",
    "classify": "printer on fire",
    "release": "fix: crash on start",
    None: "hello",
}
N_NEW = 6


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_byte_llama(tmp_path_factory.mktemp("serve") / "tiny_llama", byte_tokenizer())


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load(str(tiny_dir))


@pytest.fixture(scope="module")
def engine(loaded):
    """One engine that every test's Server reuses (each loads its own prefixes into it):
    compiled once for the module's prompts (bucket 32), N_NEW tokens and beams of 3."""
    model, tokenizer = loaded
    return Engine(
        model,
        tokenizer,
        slots=8,
        max_len=48,
        prefix_capacity=4,
        prefix_max_length=8,
        buckets=(32,),
        beam_sizes=(3,),
    )


def task_prefixes(model, after: bool = False) -> dict[str, ExportedPrefix]:
    return {
        name: random_prefix(model, length, seed, after)
        for seed, (name, length) in enumerate(LENGTHS.items())
    }


def decode_alone(server: Server, prefix: ExportedPrefix | None, task, text, **options):
    """Generated ids (before eos) of one request decoded on its own, batch 1."""
    tokens, mask = left_pad(
        [server.requests.prompt_ids(task, text)], pad_id_of(server.tokenizer), multiple=32
    )
    kv = None if prefix is None else prefix.to_prefix_kv(server.model)
    kwargs = dict(
        max_new_tokens=server.requests.defaults.max_new_tokens,
        prefix=kv,
        eos_id=server.eos_id,
        pad_id=pad_id_of(server.tokenizer),
    )
    if options.get("beam_size", 1) == 1:
        row = greedy(server.model, tokens, mask, **kwargs)[0]
    else:
        sequences, _ = beam_search(
            server.model, tokens, mask, beam_size=options["beam_size"], **kwargs
        )
        row = sequences[0]
    ids = np.asarray(row).tolist()
    return ids[: ids.index(EOS)] if EOS in ids else ids


@pytest.mark.parametrize("beam_size", [1, 3], ids=["greedy", "beam"])
def test_mixed_batch_equals_each_row_alone(loaded, engine, beam_size):
    model, tokenizer = loaded
    prefixes = task_prefixes(model)
    server = Server(
        model,
        tokenizer,
        PrefixRegistry(model, prefixes),
        defaults=DecodeOptions(max_new_tokens=N_NEW, beam_size=beam_size),
        engine=engine,
    )
    requests = [
        {"id": i, "task": task, "input": text} for i, (task, text) in enumerate(INPUTS.items())
    ]
    records = server.generate(requests, return_tokens=True)
    if beam_size == 1:
        assert server.last_stats["most_running"] == 4, "the four tasks must share steps"
    assert [r["id"] for r in records] == [0, 1, 2, 3]
    tokens = {r["task"]: r["tokens"] for r in records}
    assert len({tuple(t) for t in tokens.values()}) == 4, "prefixes should change the output"
    for task, text in INPUTS.items():
        prefix = None if task is None else prefixes[task]
        want = decode_alone(server, prefix, task, text, beam_size=beam_size)
        assert tokens[task] == want, f"task {task!r} differs from decoding it alone"
    # Other texts of the same bucket: the module's engine serves them, nothing compiles.
    server.generate([{**r, "input": r["input"][::-1]} for r in requests])
    assert server.engine is engine and engine.stats().compilations_after_warmup == 0


def test_position_conventions_share_steps(loaded, engine, tmp_path):
    """A PEFT adapter (positions after the prefix) and one of ours (from zero) together."""
    model, tokenizer = loaded
    ours = random_prefix(model, 3, seed=10, separator=" => ")
    peft = random_prefix(model, 5, seed=11, after=True)
    export.save(ours, tmp_path / "ours")
    export.save_peft(peft, tmp_path / "peft")
    registry = PrefixRegistry.from_dirs(
        model, {"ours": tmp_path / "ours", "peft": tmp_path / "peft"}
    )
    assert registry.tasks["ours"].separator == " => "
    assert registry.tasks["peft"].positions_after_prefix
    assert registry.nbytes >= (3 + 5) * 2 * model.config.num_layers * model.config.kv_dim * 4
    server = Server(
        model, tokenizer, registry, defaults=DecodeOptions(max_new_tokens=N_NEW), engine=engine
    )
    assert server.requests.prompt_ids("ours", "ab")[-4:] == list(b" => ")
    requests = [
        {"id": "a", "task": "ours", "input": "first"},
        {"id": "b", "task": "peft", "input": "second request"},
        {"id": "c", "task": "ours", "input": "third one"},
        {"id": "d", "task": None, "input": "no prefix"},
    ]
    records = server.generate(requests, return_tokens=True)
    assert server.last_stats["most_running"] == 4
    loaded_prefixes = {
        "ours": export.load(tmp_path / "ours"),
        "peft": export.load(tmp_path / "peft"),
    }
    for request, record in zip(requests, records, strict=True):
        assert record["id"] == request["id"]
        prefix = loaded_prefixes.get(request["task"])
        want = decode_alone(server, prefix, request["task"], request["input"])
        assert record["tokens"] == want


def test_mismatched_prefixes_are_named(loaded, tmp_path):
    model, _ = loaded
    deeper = random_prefix(model, 4, seed=0)
    deeper.num_layers = 3
    deeper.table = np.zeros((4, 3 * 2 * model.config.kv_dim), np.float32)
    export.save(deeper, tmp_path / "other")
    good = random_prefix(model, 4, seed=1)
    with pytest.raises(PrefixMismatchError, match=r"'legal' \(.*other\).*num_layers=3"):
        PrefixRegistry.from_dirs(model, {"legal": tmp_path / "other"})

    kv = random_prefix(model, 4, seed=2)
    kv.num_kv_heads, kv.head_dim = 1, 2 * model.config.head_dim  # same width, other kv layout
    with pytest.raises(PrefixMismatchError, match="'tickets'.*num_kv_heads=1"):
        PrefixRegistry(model, {"ok": good, "tickets": kv})

    wide = random_prefix(model, 4, seed=3)
    wide.table = np.zeros((4, wide.table.shape[1] + 8), np.float32)
    with pytest.raises(PrefixMismatchError, match="'wide'.*shape"):
        PrefixRegistry(model, {"wide": wide})

    identity = random_prefix(model, 4, seed=4)
    identity.model = {**identity.model, "hidden_size": 999}
    with pytest.raises(PrefixMismatchError, match="'notes'.*hidden_size=999"):
        PrefixRegistry(model, {"notes": identity})

    with pytest.raises(ValueError, match="reserved"):
        PrefixRegistry(model, {"base": good})
    with pytest.raises(ValueError, match="'gone'.*not found"):
        PrefixRegistry.from_dirs(model, {"gone": tmp_path / "missing"})


def test_bad_requests_get_errors_and_the_rest_is_answered(loaded, engine):
    model, tokenizer = loaded
    registry = PrefixRegistry(model, task_prefixes(model))
    server = Server(
        model,
        tokenizer,
        registry,
        defaults=DecodeOptions(max_new_tokens=N_NEW),
        max_input_tokens=20,
        engine=engine,
    )
    requests = [
        {"id": 0, "task": "summarize", "input": "fine"},
        {"id": 1, "task": "translate", "input": "unknown task"},
        {"id": 2, "task": "classify", "input": "   "},
        {"id": 3, "task": "classify", "input": "x" * 21},
        {"id": 4, "task": "release", "input": "bad option", "beam_size": 0},
        {"id": 5, "task": "release", "input": "typo", "max_new_token": 3},
        {"id": 6, "task": "release", "input": "type", "max_new_tokens": "3"},
        {"id": 7, "task": None, "input": "own options", "min_new_tokens": 6},
        {"id": 8, "task": "base", "input": "base model"},
        {"id": 9, "task": "classify", "input": "x" * 20},
        {"id": 10, "input": "no task"},
        Request(id=11, task="release", input="a Request object"),
        {"id": 12, "task": 3, "input": "task is not a string"},
        {"id": 13, "task": "release", "input": ["not", "a", "string"]},
    ]
    records = server.generate(requests)
    assert [r["id"] for r in records] == list(range(14))
    errors = {r["id"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {1, 2, 3, 4, 5, 6, 10, 12, 13}
    assert "unknown task 'translate'" in errors[1] and "'summarize'" in errors[1]
    assert errors[2] == "empty input"
    assert "too long: 21 tokens" in errors[3]
    assert "beam_size" in errors[4]
    assert "unknown field 'max_new_token'" in errors[5]
    assert "max_new_tokens must be int" in errors[6]
    assert "lacks task" in errors[10]
    assert "task must be a string" in errors[12] and "input must be a string" in errors[13]
    assert records[1]["task"] == "translate"
    for r in records:
        if r["id"] not in errors:
            assert set(r) == {"id", "task", "output"}
    # A per-request option takes effect.
    assert server.generate([requests[7]], return_tokens=True)[0]["tokens"].__len__() == N_NEW

    assert isinstance(server.complete("classify", "ok"), str)
    with pytest.raises(RequestError, match="unknown task"):
        server.complete("nope", "text")
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'"):
        registry.task("nope")

    lines = [
        json.dumps({"id": "w", "task": "summarize", "input": "first"}),
        '{"id": "y", "task": ',  # malformed
        "",  # blank lines are skipped
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": "x", "task": "classify", "input": "second"}),
        json.dumps({"task": "summarize", "input": "no id"}),
        json.dumps({"id": "z", "task": "release", "input": "third"}),
        json.dumps({"id": "v", "task": None, "input": "fourth"}),
    ]
    records = server.serve_lines(lines)
    assert [r.get("id", r.get("line")) for r in records] == ["w", 2, 4, "x", 6, "z", "v"]
    assert "malformed JSON" in records[1]["error"]
    assert "not a JSON object" in records[2]["error"]
    assert "no id" in records[4]["error"]
    assert all("output" in records[i] for i in (0, 3, 5, 6))


def test_cli_end_to_end(tiny_dir, loaded, engine, tmp_path, capsys):
    model, tokenizer = loaded
    prefixes = task_prefixes(model)
    for name, prefix in prefixes.items():
        export.save(prefix, tmp_path / name)
    lines = [
        {"id": 3, "task": "release", "input": "feat: dark mode"},
        {"id": 1, "task": "summarize", "input": "short"},
        {"id": 2, "task": "unknown", "input": "x"},
        {"id": 4, "task": None, "input": "plain base model", "beam_size": 3},
        {"id": 5, "task": "classify", "input": "refund please"},
        {"id": 6, "task": None, "input": "again"},
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in lines) + "{oops\n")
    out = tmp_path / "out" / "records.jsonl"
    argv = ["--model", str(tiny_dir), "--input", str(requests), "--output", str(out)]
    argv += [f"--prefix={name}={tmp_path / name}" for name in prefixes]
    argv += ["--max-new-tokens", str(N_NEW), "--batch-size", "4", "--tokens"]
    assert main(argv) == 0
    assert "7 records (2 errors), " in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("id", r.get("line")) for r in records] == [3, 1, 2, 4, 5, 6, 7]
    assert "unknown task" in records[2]["error"] and "malformed JSON" in records[6]["error"]
    # The same requests through the Python API, with the model loaded here.
    server = Server(
        model,
        tokenizer,
        PrefixRegistry(model, prefixes),
        defaults=DecodeOptions(max_new_tokens=N_NEW),
        batch_size=4,
        engine=engine,
    )
    assert server.generate(lines, return_tokens=True) == records[:6]
