"""The OpenAI-compatible HTTP server, live: `prefix-jax serve` runs as a real process on
loopback over the real engine, and the official `openai` client (plus raw HTTP for the error
cases) drives it.

The model is a tiny random Llama with a byte tokenizer that has ChatML special tokens and a
chat template; the server holds two prefixes, one of ours (positions from zero, separator
" => ") and one PEFT adapter (positions after the prefix). At temperature 0 every answer must
equal `decode.greedy` on that prompt alone, decoded the same way, computed in this process.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import itertools
import json
import os
import re
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
from conftest import byte_tokenizer, random_prefix, save_tiny_byte_llama

from prefix_jax.data.tokens import left_pad, plain_ids, separator_ids
from prefix_jax.infer.decode import greedy
from prefix_jax.methods.prefix import artifact
from prefix_jax.models import load

REPO = Path(__file__).parents[1]
EOS = 256
BASE = "tiny-base"
KEY = "test-key-123"
MAX_LEN = 256
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer():
    """The byte tokenizer with ChatML markers as special tokens and a chat template."""
    tok = byte_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _start(args: list[str], log: Path):
    """Launch `prefix-jax serve` on a free port; returns the process and its open stderr
    log (`_ready` waits for its URL)."""
    cmd = [sys.executable, "-m", "prefix_jax.cli", "serve", "--port", "0", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    err = log.open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    return proc, err


def _ready(proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    """The server's URL, from the line it prints once it listens."""
    found: list[str] = []

    def read():
        for line in proc.stdout:
            if m := re.search(r"serving (http://\S+?)/v1", line):
                found.append(m.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        proc.kill()
        pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
    return found[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The model directory, prefixes on disk (served, loadable, outside the root), and two
    live servers: `main` (prefixes, --api-key, --prefix-root) and `bare` (neither)."""
    root = tmp_path_factory.mktemp("server")
    model_dir = save_tiny_byte_llama(root / "tiny", _tokenizer())
    model, tokenizer = load(str(model_dir))

    prefixes = {
        "ours": random_prefix(model, 3, seed=1, separator=" => "),
        "peft": random_prefix(model, 5, seed=2, after=True),
        "extra": random_prefix(model, 4, seed=3),
    }
    artifact.save(prefixes["ours"], root / "ours")
    artifact.save_peft(prefixes["peft"], root / "peft")
    allowed = root / "allowed"
    artifact.save(prefixes["extra"], allowed / "extra")
    (allowed / "broken").mkdir()
    (allowed / "broken" / "prefix.json").write_text("{not json")
    artifact.save(prefixes["extra"], root / "outside")
    (allowed / "escape").symlink_to(root / "outside", target_is_directory=True)
    (allowed / "sneaky").mkdir()  # a real directory whose files link out of the root
    for file in (root / "outside").iterdir():
        (allowed / "sneaky" / file.name).symlink_to(file)

    common = ["--model", str(model_dir), "--max-len", str(MAX_LEN), "--buckets", "64"]
    main, main_log = _start(
        [
            *common,
            "--served-model-name",
            BASE,
            "--prefix",
            f"ours={root / 'ours'}",
            "--prefix",
            f"peft={root / 'peft'}",
            "--slots",
            "2",
            "--max-waiting",
            "3",
            "--api-key",
            KEY,
            "--prefix-root",
            str(allowed),
        ],
        root / "main.log",
    )
    small = ["--model", str(model_dir), "--max-len", "32", "--buckets", "16", "--slots", "1"]
    bare, bare_log = _start(small, root / "bare.log")
    try:
        urls = {"main": _ready(main, root / "main.log"), "bare": _ready(bare, root / "bare.log")}
        yield {
            "urls": urls,
            "model": model,
            "tokenizer": tokenizer,
            "prefixes": prefixes,
            "root": root,
            "model_dir": str(model_dir),
        }
    finally:
        for proc, log in ((main, main_log), (bare, bare_log)):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


@pytest.fixture(scope="module")
def client(setup) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup["urls"]["main"] + "/v1", api_key=KEY, max_retries=0)


def reference(setup, ids: list[int], prefix: str | None, max_tokens: int) -> tuple[list, str]:
    """`decode.greedy` on this prompt alone: (ids up to and with eos, text as the server
    decodes it, special tokens skipped). One program per prefix: every prompt is padded to
    64 tokens and decodes 100 (greedy's first k tokens do not depend on how many follow)."""
    model, tokenizer = setup["model"], setup["tokenizer"]
    tokens, mask = left_pad([ids], EOS, multiple=64)
    kv = None if prefix is None else setup["prefixes"][prefix].to_prefix_kv(model)
    out = greedy(model, tokens, mask, max_new_tokens=100, prefix=kv, eos_id=EOS, pad_id=EOS)
    row = np.asarray(out[0]).tolist()[:max_tokens]
    row = row[: row.index(EOS) + 1] if EOS in row else row
    text = tokenizer.decode([t for t in row if t != EOS], skip_special_tokens=True)
    return row, text


def prompt_ids(setup, text: str, prefix: str | None) -> list[int]:
    """The ids the server builds for a completion: the text, then a prefix's separator."""
    tokenizer = setup["tokenizer"]
    (ids,) = plain_ids(tokenizer, [text])
    if prefix is None:
        return ids
    separator = {"ours": " => ", "peft": "\nTarget:\n", "extra": "\nTarget:\n"}[prefix]
    return ids + separator_ids(tokenizer, separator)


def post(url: str, path: str, body, key: str | None = KEY) -> tuple[int, dict]:
    """Raw HTTP POST (body: a JSON-able object, or bytes sent as they are)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str, path: str) -> str:
    with urllib.request.urlopen(url + path, timeout=30) as response:
        return response.read().decode()


def metric(url: str, name: str, **labels) -> float:
    """A sample of /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in get(url, "/metrics").splitlines():
        sample, _, value = line.rpartition(" ")
        head, _, inner = sample.partition("{")
        got = ",".join(sorted(inner.rstrip("}").split(","))) if inner else ""
        if head == name and got == want:
            return float(value)
    return 0.0


PROMPTS = {None: "hello there", "ours": "The parties agree.", "peft": "fix: crash on start"}


@pytest.mark.parametrize("model", [None, "ours", "peft"], ids=["base", "ours", "peft"])
def test_completions_equal_greedy_alone(setup, client, model):
    name = model or BASE
    ids = prompt_ids(setup, PROMPTS[model], model)
    want_ids, want = reference(setup, ids, model, 12)
    whole = client.completions.create(
        model=name, prompt=PROMPTS[model], max_tokens=12, temperature=0
    )
    assert whole.choices[0].text == want
    assert whole.choices[0].finish_reason == ("stop" if EOS in want_ids else "length")
    assert whole.usage.prompt_tokens == len(ids)
    assert whole.usage.completion_tokens == len(want_ids)
    assert whole.model == name and whole.object == "text_completion"
    chunks = list(
        client.completions.create(
            model=name, prompt=PROMPTS[model], max_tokens=12, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len(chunks) > 1, "a stream comes in pieces"


def test_concurrent_requests_each_equal_greedy_alone(setup, client):
    """Three models at once share the engine's steps; each answer is still its own."""
    wanted = {m: reference(setup, prompt_ids(setup, PROMPTS[m], m), m, 20)[1] for m in PROMPTS}

    def ask(model):
        return (
            client.completions.create(
                model=model or BASE, prompt=PROMPTS[model], max_tokens=20, temperature=0
            )
            .choices[0]
            .text
        )

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        got = dict(zip(PROMPTS, pool.map(ask, PROMPTS), strict=True))
    assert got == wanted


def test_chat_uses_the_template(setup, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo"}]
    text = setup["tokenizer"].apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    (ids,) = plain_ids(setup["tokenizer"], [text])
    want_ids, want = reference(setup, ids, "ours", 10)
    whole = client.chat.completions.create(
        model="ours", messages=messages, max_tokens=10, temperature=0
    )
    assert whole.choices[0].message.content == want
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == len(ids)
    assert whole.usage.completion_tokens == len(want_ids)
    stream = client.chat.completions.create(
        model="ours",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == len(want_ids) and not chunks[-1].choices
    # without max_tokens the reply may fill the slot (prefix + prompt + reply)
    free = client.chat.completions.create(model="ours", messages=messages, temperature=0)
    used = 3 + free.usage.prompt_tokens + free.usage.completion_tokens
    assert used == MAX_LEN or free.choices[0].finish_reason == "stop"


def test_stop_strings_and_seeds(setup, client):
    ids = prompt_ids(setup, PROMPTS[None], None)
    _, want = reference(setup, ids, None, 30)
    stop = want[6:8]
    assert len(stop) == 2 and want.index(stop) >= 1, f"pick another stop in {want!r}"
    cut = client.completions.create(
        model=BASE, prompt=PROMPTS[None], max_tokens=30, temperature=0, stop=[stop, "\x00never"]
    )
    assert cut.choices[0].text == want[: want.index(stop)]
    assert cut.choices[0].finish_reason == "stop"

    def sample(seed):
        return (
            client.completions.create(
                model="peft", prompt="abc", max_tokens=16, temperature=1.0, seed=seed
            )
            .choices[0]
            .text
        )

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1, "different seeds should sample differently"


def test_vllm_extensions_ignore_eos_and_min_tokens(setup, client):
    """A prompt whose greedy reply ends early runs on to max_tokens with `ignore_eos`, and
    `min_tokens` bans eos before that many tokens."""
    for prompt in map("".join, itertools.product(string.ascii_lowercase, repeat=2)):
        replied = reference(setup, prompt_ids(setup, prompt, None), None, 100)[0]
        if EOS in replied[1:]:  # the random model rarely ends; a two-letter prompt does
            break
    n_eos = len(replied)
    kwargs = dict(model=BASE, prompt=prompt, max_tokens=n_eos + 5, temperature=0)
    ended = client.completions.create(**kwargs)
    assert ended.usage.completion_tokens == n_eos and ended.choices[0].finish_reason == "stop"
    fixed = client.completions.create(**kwargs, extra_body={"ignore_eos": True})
    assert fixed.usage.completion_tokens == n_eos + 5
    assert fixed.choices[0].finish_reason == "length"
    late = client.completions.create(**kwargs, extra_body={"min_tokens": n_eos + 1})
    assert late.usage.completion_tokens > n_eos


def test_models_list_and_errors_through_the_client(setup, client):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {BASE, "ours", "peft"}
    assert cards["ours"].parent == BASE and cards["peft"].parent == BASE
    assert cards[BASE].parent is None
    with pytest.raises(openai.NotFoundError, match="'nope' does not exist"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    bad = openai.OpenAI(base_url=setup["urls"]["main"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


GOOD = {"model": BASE, "prompt": "hi", "max_tokens": 2}


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        (b'{"model": "tiny-base", "prompt": ', 400, None, "malformed JSON"),
        (b"[1, 2]", 400, None, "valid dictionary"),
        ({"prompt": "hi"}, 400, "model", "Field required"),
        ({"model": BASE}, 400, "prompt", "Field required"),
        ({**GOOD, "max_tokens": "2"}, 400, "max_tokens", "valid integer"),
        ({**GOOD, "temperature": "hot"}, 400, "temperature", "valid number"),
        ({**GOOD, "stream": "yes"}, 400, "stream", "valid boolean"),
        ({**GOOD, "temperature": 3}, 400, "temperature", "less than or equal to 2"),
        ({**GOOD, "top_p": 0}, 400, "top_p", "greater than 0"),
        ({**GOOD, "max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
        ({**GOOD, "seed": -1}, 400, "seed", "seed must be"),
        ({**GOOD, "n": 2}, 400, "n", "n is not supported"),
        ({**GOOD, "best_of": 2, "temperature": 0}, 400, "best_of", "beam width"),
        ({**GOOD, "logprobs": 1}, 400, "logprobs", "not supported"),
        ({**GOOD, "tools": []}, 400, "tools", "unknown or unsupported field 'tools'"),
        ({**GOOD, "prompt": ""}, 400, "prompt", "empty"),
        ({**GOOD, "prompt": [1, 999]}, 400, "prompt", "outside the vocabulary"),
        ({**GOOD, "prompt": ["a", "b"]}, 400, "prompt", "one prompt per request"),
        ({**GOOD, "stop": 5}, 400, "stop", "a string or a list of strings"),
        ({**GOOD, "model": "nope"}, 404, "model", "'nope' does not exist"),
        ({**GOOD, "max_tokens": MAX_LEN}, 400, "max_tokens", str(MAX_LEN)),
    ],
)
def test_bad_completions_get_openai_errors(setup, body, status, param, message):
    url = setup["urls"]["main"]
    code, answer = post(url, "/v1/completions", body)
    assert code == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"] and error["param"] == param
    assert post(url, "/v1/completions", GOOD)[0] == 200, "the server keeps serving"


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": BASE, "messages": []}, "messages", "at least 1 item"),
        ({"model": BASE, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", ""),
        ({"model": BASE, "messages": [{"role": "user"}]}, "messages.0.content", "required"),
        (
            {"model": BASE, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages.0.content",
            "a list of text parts",
        ),
        (
            {"model": BASE, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
            "top_logprobs",
            "not supported",
        ),
    ],
)
def test_bad_chats_get_400(setup, body, param, message):
    code, answer = post(setup["urls"]["main"], "/v1/chat/completions", body)
    assert code == 400 and answer["error"]["param"] == param
    assert message in answer["error"]["message"]


def test_api_key(setup):
    main, bare = setup["urls"]["main"], setup["urls"]["bare"]
    for key in (None, "wrong", KEY + "x"):
        code, answer = post(main, "/v1/completions", GOOD, key=key)
        assert code == 401 and answer["error"]["code"] == "invalid_api_key"
    code, _ = post(main, "/v1/completions", b"{broken", key=None)
    assert code == 401, "the key is checked before the body"
    assert json.loads(get(main, "/health"))["status"] == "ok", "probes need no key"
    code, answer = post(bare, "/v1/completions", {**GOOD, "model": setup["model_dir"]}, key=None)
    assert code == 200, "without --api-key no key is needed; the base is named after --model"


def test_full_queue_is_429_and_the_server_recovers(setup):
    """2 slots + 3 waiting: a burst of 10 long requests overflows the queue."""
    url = setup["urls"]["main"]
    body = {**GOOD, "max_tokens": 100, "ignore_eos": True, "prompt": "burst"}
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: post(url, "/v1/completions", body), range(10)))
    statuses = sorted(code for code, _ in codes)
    assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses, statuses
    full = next(answer for code, answer in codes if code == 429)
    assert full["error"]["type"] == "rate_limit_error" and "queue" in full["error"]["message"]
    assert post(url, "/v1/completions", GOOD)[0] == 200


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_client_leaving_cancels_its_request(setup, stream):
    """Mid-stream, or while waiting for a whole response: the request is cancelled and
    its slot freed (it would otherwise run for 200 tokens)."""
    url = setup["urls"]["main"]
    cancelled = metric(url, "prefix_jax_requests_total", model=BASE, finish_reason="cancelled")
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = {**GOOD, "prompt": "long", "max_tokens": 200, "ignore_eos": True, "stream": stream}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    conn.request("POST", "/v1/completions", json.dumps(body), headers)
    if stream:
        response = conn.getresponse()
        assert response.status == 200
        assert response.read1(64).startswith(b"data: {")  # the first token arrived
    else:
        deadline = time.monotonic() + 10
        while metric(url, "prefix_jax_requests_running") < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
    conn.sock.close()  # the client goes away
    conn.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done = metric(url, "prefix_jax_requests_total", model=BASE, finish_reason="cancelled")
        if done > cancelled and metric(url, "prefix_jax_slots_in_use") == 0:
            break
        time.sleep(0.05)
    assert done == cancelled + 1, "the request was cancelled, not run to its end"
    assert metric(url, "prefix_jax_slots_in_use") == 0


def test_metrics(setup, client):
    url = setup["urls"]["main"]
    client.completions.create(model="ours", prompt="count me", max_tokens=4, temperature=0)
    text = get(url, "/metrics")
    for name in (
        "prefix_jax_time_to_first_token_seconds_bucket",
        "prefix_jax_time_per_output_token_seconds_bucket",
        "prefix_jax_requests_running",
        "prefix_jax_requests_waiting",
        "prefix_jax_slots_in_use",
    ):
        assert f"\n{name}" in text, name
    assert metric(url, "prefix_jax_slots") == 2
    assert metric(url, "prefix_jax_time_to_first_token_seconds_count", model="ours") >= 1
    assert metric(url, "prefix_jax_generation_tokens_total", model="ours") >= 4
    assert metric(url, "prefix_jax_requests_total", model="ours", finish_reason="length") >= 1
    assert metric(url, "prefix_jax_compilations_after_warmup") == 0


def test_load_and_unload_under_the_prefix_root(setup, client):
    url, root = setup["urls"]["main"], setup["root"]
    code, card = post(url, "/v1/load_prefix", {"name": "extra", "path": "extra"})
    assert code == 200 and card["parent"] == BASE and card["prefix_length"] == 4
    assert "extra" in {m.id for m in client.models.list().data}
    ids = prompt_ids(setup, "new task", "extra")
    _, want = reference(setup, ids, "extra", 8)
    got = client.completions.create(model="extra", prompt="new task", max_tokens=8, temperature=0)
    assert got.choices[0].text == want
    assert post(url, "/v1/load_prefix", {"name": "extra", "path": "extra"})[0] == 400
    assert post(url, "/v1/unload_prefix", {"name": "extra"}) == (
        200,
        {"id": "extra", "object": "model", "deleted": True},
    )
    assert "extra" not in {m.id for m in client.models.list().data}
    assert post(url, "/v1/completions", {**GOOD, "model": "extra"})[0] == 404
    assert post(url, "/v1/unload_prefix", {"name": "extra"})[0] == 404
    # an absolute path under the root loads too
    assert (
        post(url, "/v1/load_prefix", {"name": "again", "path": str(root / "allowed/extra")})[0]
        == 200
    )


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("escape", 403, "outside the prefix root"),  # a symlink out of the root
        ("sneaky", 403, "links outside the prefix root"),
        ("../outside", 403, "outside the prefix root"),
        ("extra/../../outside", 403, "outside the prefix root"),
        ("/etc", 403, "outside the prefix root"),
        ("missing", 400, "not a directory"),
        ("broken", 400, "failed to load"),
    ],
)
def test_load_prefix_refusals(setup, path, status, message):
    code, answer = post(setup["urls"]["main"], "/v1/load_prefix", {"name": "x", "path": path})
    assert code == status, answer
    assert message in answer["error"]["message"]


def test_loading_is_off_without_a_root(setup):
    code, answer = post(
        setup["urls"]["bare"],
        "/v1/load_prefix",
        {"name": "x", "path": str(setup["root"] / "ours")},
        key=None,
    )
    assert code == 403 and "--prefix-root" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefix-root", "/no/such/dir"], "--prefix-root /no/such/dir is not a directory"),
        (["--prefix", "e2e=/no/such/export"], "--prefix directories not found: e2e=/no/such"),
    ],
)
def test_cli_refuses_bad_arguments_before_loading(args, message):
    done = subprocess.run(
        [sys.executable, "-m", "prefix_jax.cli", "serve", "--model", "/no/such/model", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
