"""Task loaders: raw data-to-text / summarization records -> (source, target) examples.

Every loader takes either a local file or a Hugging Face hub name (read with
`datasets.load_dataset`, so it needs network or a local hub cache). A local path is anything
that exists or looks like a path (a .csv/.json/.jsonl/.txt suffix, or a leading `/`, `.` or
`~`); a missing local path is a `DataError`, never a silent hub lookup.

Bad records raise `DataError` naming the file and line (or record) number, so a broken file
is fixed at its source; with `skip_bad=True` they are skipped and listed in
`LoadResult.skipped` instead. File-level problems (missing, unreadable, not JSON, missing
columns, no examples at all) always raise.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ITEM_SEP = " | "
PART_SEP = " : "


@dataclass(frozen=True)
class Example:
    """One training pair; a source with several references gives several examples."""

    source: str
    target: str


@dataclass
class EvalGroup:
    """One evaluation input with all its references (multi-reference BLEU etc.)."""

    source: str
    references: list[str]


class DataError(ValueError):
    """A data file or record is unusable; the message names the file and line/record."""


@dataclass
class LoadResult:
    """Loaded examples plus the locations and reasons of records skipped with `skip_bad`."""

    examples: list[Example]
    skipped: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


class _BadRecord(Exception):
    """Raised by record converters; the caller adds the file and line/record number."""


Record = tuple[str, Any]  # (location for messages, raw record)
Converter = Callable[[Any], list[Example]]


# --------------------------------------------------------------------------- linearization


def linearize_mr(mr: str, item_sep: str = ITEM_SEP, kv_sep: str = PART_SEP) -> str:
    """E2E meaning representation as Li & Liang feed it to the LM.

    `name[The Eagle], eatType[coffee shop]` -> `name : The Eagle | eatType : coffee shop`.
    """
    return item_sep.join(f"{key}{kv_sep}{value}" for key, value in parse_mr(mr))


_MR_ITEM = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*")


def parse_mr(mr: str) -> list[tuple[str, str]]:
    """Split an E2E MR into (attribute, value) pairs; malformed text raises ValueError."""
    pairs, pos = [], 0
    while True:
        match = _MR_ITEM.match(mr, pos)
        if match is None:
            raise ValueError(f"malformed meaning representation at char {pos}: {mr!r}")
        pairs.append((match.group(1), match.group(2).strip()))
        pos = match.end()
        if pos == len(mr):
            return pairs
        if mr[pos] != ",":
            raise ValueError(f"malformed meaning representation at char {pos}: {mr!r}")
        pos += 1


def linearize_triples(
    triples: Iterable[Sequence[str]],
    item_sep: str = ITEM_SEP,
    part_sep: str = PART_SEP,
    underscores_to_spaces: bool = True,
) -> str:
    """(subject, property, object) triples as `s : p : o | s : p : o`.

    Underscores in entity names (DBpedia style `Jacob_Bundsgaard`) become spaces, as in
    Li & Liang's code, so the LM sees ordinary words; properties are kept verbatim. Unlike
    their code, no separator is put before the first triple.
    """

    def entity(name: str) -> str:
        return name.replace("_", " ") if underscores_to_spaces else name

    return item_sep.join(f"{entity(s)}{part_sep}{p}{part_sep}{entity(o)}" for s, p, o in triples)


# --------------------------------------------------------------------------- record sources


_FILE_SUFFIXES = {".csv", ".json", ".jsonl", ".txt"}


def _is_local(path: str | Path) -> bool:
    text = str(path)
    candidate = Path(text).expanduser()
    return candidate.exists() or candidate.suffix in _FILE_SUFFIXES or text[:1] in "/.~"


def _local_file(path: str | Path) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise DataError(f"{path}: no such file")
    return resolved


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from err


def _hub_records(name: str, split: str) -> Iterator[Record]:
    """Rows of a hub dataset; imported lazily so offline use never touches `datasets`."""
    import datasets

    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as err:  # offline, unknown name or split: the hub's many error types
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"hub dataset {name!r} (split {split!r}) could not be loaded ({reason}); "
            "give a local file with --config.data.path=PATH"
        ) from err
    for i, row in enumerate(rows, start=1):
        yield f"{name}[{split}] record {i}", row


def _csv_records(path: Path, columns: Sequence[Sequence[str]]) -> Iterator[Record]:
    """CSV rows as dicts located by the line each row starts on (header = line 1).

    `columns` lists, per needed field, the accepted header names (official vs hub names).
    """
    lines = _read_text(path).splitlines(keepends=True)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}:1: empty file, expected a header row") from None
    for names in columns:
        if not any(name in header for name in names):
            raise DataError(f"{path}:1: missing column {' or '.join(map(repr, names))}")
    start = reader.line_num + 1
    for row in reader:
        if row:
            values = {name: (row[i] if i < len(row) else None) for i, name in enumerate(header)}
            yield f"{path}:{start}", values
        start = reader.line_num + 1


def _json_document(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from err


def _jsonl_records(path: Path) -> Iterator[Record]:
    """Non-blank lines, still as text: a malformed line is a bad record, not a bad file."""
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            yield f"{path}:{number}", line


def _parse_json_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise _BadRecord(f"malformed JSON line: {err.msg}") from None


def _collect(
    records: Iterable[Record], convert: Converter, where: str, skip_bad: bool
) -> LoadResult:
    """Convert all records, raising or skipping bad ones; an empty result is an error."""
    examples: list[Example] = []
    skipped: list[str] = []
    for location, record in records:
        try:
            examples.extend(convert(record))
        except _BadRecord as err:
            message = f"{location}: {err}"
            if not skip_bad:
                raise DataError(message) from None
            skipped.append(message)
    if skipped:
        log.warning("%s: skipped %d bad records, first: %s", where, len(skipped), skipped[0])
    if not examples:
        raise DataError(f"{where}: no usable examples ({len(skipped)} bad records skipped)")
    return LoadResult(examples, skipped)


# --------------------------------------------------------------------------- field access


def _field(record: Mapping[str, Any], *names: str) -> Any:
    """First present field of `names` (official file vs hub spelling)."""
    if not isinstance(record, Mapping):
        raise _BadRecord(f"expected an object, got {type(record).__name__}")
    for name in names:
        if record.get(name) is not None:
            return record[name]
    raise _BadRecord(f"missing {' or '.join(map(repr, names))}")


def _text(record: Mapping[str, Any], *names: str) -> str:
    value = _field(record, *names)
    if not isinstance(value, str):
        raise _BadRecord(f"{names[0]!r} is not a string")
    if not value.strip():
        raise _BadRecord(f"empty {names[0]!r}")
    return value.strip()


def _pair(source: str, target: str) -> Example:
    if not source:
        raise _BadRecord("empty source")
    if not target:
        raise _BadRecord("empty target")
    return Example(source, target)


# --------------------------------------------------------------------------- tasks


def load_e2e(
    path: str | Path,
    *,
    split: str = "train",
    item_sep: str = ITEM_SEP,
    skip_bad: bool = False,
) -> LoadResult:
    """E2E NLG: official csv (`mr,ref`) or hub `e2e_nlg` (`meaning_representation,...`).

    `split` only selects the hub split; a file is its own split.
    """
    mr_names, ref_names = ("mr", "meaning_representation"), ("ref", "human_reference")

    def convert(row: Mapping[str, Any]) -> list[Example]:
        try:
            source = linearize_mr(_text(row, *mr_names), item_sep=item_sep)
        except ValueError as err:
            raise _BadRecord(str(err)) from None
        return [_pair(source, _text(row, *ref_names))]

    if _is_local(path):
        file = _local_file(path)
        return _collect(_csv_records(file, [mr_names, ref_names]), convert, str(file), skip_bad)
    return _collect(_hub_records(str(path), split), convert, str(path), skip_bad)


def _webnlg_triples(entry: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Triples from Li & Liang's layout (`modifiedtripleset`) or hub `web_nlg`."""
    if "modifiedtripleset" in entry:
        try:
            return [(t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]]
        except (KeyError, TypeError):
            raise _BadRecord("triple without subject/property/object") from None
    try:
        strings = _field(entry, "modified_triple_sets")["mtriple_set"][0]
        triples = [tuple(part.strip() for part in t.split("|")) for t in strings]
    except (KeyError, TypeError, IndexError, AttributeError):
        raise _BadRecord("'modified_triple_sets' is not {'mtriple_set': [[...]]}") from None
    if any(len(t) != 3 for t in triples):
        raise _BadRecord("triple string is not 's | p | o'")
    return triples


def _webnlg_lexicalisations(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(text, comment) pairs from either layout."""
    lex = _field(entry, "lexicalisations", "lex")
    try:
        if isinstance(lex, Mapping):  # hub: columns of lists
            return list(zip(lex["text"], lex["comment"], strict=True))
        return [(item["lex"], item.get("comment", "")) for item in lex]
    except (KeyError, TypeError, AttributeError, ValueError):
        raise _BadRecord("lexicalisations are not [{'lex', 'comment'}, ...]") from None


def load_webnlg(
    path: str | Path,
    *,
    split: str = "train",
    good_only: bool = True,
    underscores_to_spaces: bool = True,
    skip_bad: bool = False,
) -> LoadResult:
    """WebNLG 2017, Li & Liang's JSON layout (or hub `web_nlg`, `webnlg_challenge_2017`).

    Training keeps only lexicalisations whose comment is `good` (as Li & Liang do). For
    evaluation groups load with `good_only=False`: every lexicalisation of an entry is a
    reference, matching the official multi-reference evaluation. A bad lexicalisation makes
    its whole entry bad. Records are numbered from 1 in file order.
    """

    def convert(entry: Any) -> list[Example]:
        if isinstance(entry, Mapping) and len(entry) == 1 and "category" not in entry:
            (entry,) = entry.values()  # Li & Liang wrap each entry as {"<id>": {...}}
        if not isinstance(entry, Mapping):
            raise _BadRecord(f"expected an object, got {type(entry).__name__}")
        triples = _webnlg_triples(entry)
        if not triples:
            raise _BadRecord("empty triple set")
        source = linearize_triples(triples, underscores_to_spaces=underscores_to_spaces)
        examples = []
        for number, (text, comment) in enumerate(_webnlg_lexicalisations(entry), start=1):
            if good_only and comment != "good":
                continue
            if not isinstance(text, str) or not text.strip():
                raise _BadRecord(f"lexicalisation {number}: empty target")
            examples.append(_pair(source, text.strip()))
        return examples

    if not _is_local(path):
        return _collect(_hub_records(str(path), split), convert, str(path), skip_bad)
    file = _local_file(path)
    document = _json_document(file)
    if not isinstance(document, Mapping) or not isinstance(document.get("entries"), list):
        raise DataError(f"{file}: expected {{'entries': [...]}} (Li & Liang's WebNLG layout)")
    records = ((f"{file}: record {i}", e) for i, e in enumerate(document["entries"], start=1))
    return _collect(records, convert, str(file), skip_bad)


def load_dart(
    path: str | Path,
    *,
    split: str = "train",
    underscores_to_spaces: bool = True,
    skip_bad: bool = False,
) -> LoadResult:
    """DART v1.1.1 JSON (list of `{tripleset, annotations}`) or hub `dart`.

    Each annotation's `text` is one target; records are numbered from 1 in file order.
    """

    def convert(item: Any) -> list[Example]:
        triples = _field(item, "tripleset")
        if not triples or any(not isinstance(t, list | tuple) or len(t) != 3 for t in triples):
            raise _BadRecord("'tripleset' must be a non-empty list of [s, p, o]")
        source = linearize_triples(triples, underscores_to_spaces=underscores_to_spaces)
        annotations = _field(item, "annotations")
        if isinstance(annotations, Mapping):  # hub: columns of lists
            annotations = [{"text": text} for text in annotations.get("text", [])]
        if not annotations:
            raise _BadRecord("no annotations")
        return [_pair(source, _text(a, "text")) for a in annotations]

    if not _is_local(path):
        return _collect(_hub_records(str(path), split), convert, str(path), skip_bad)
    file = _local_file(path)
    document = _json_document(file)
    if not isinstance(document, list):
        raise DataError(f"{file}: expected a JSON list of DART records")
    records = ((f"{file}: record {i}", item) for i, item in enumerate(document, start=1))
    return _collect(records, convert, str(file), skip_bad)


def load_jsonl(
    path: str | Path,
    *,
    split: str = "train",
    source_key: str = "source",
    target_key: str = "target",
    skip_bad: bool = False,
) -> LoadResult:
    """JSON lines with one `{source_key: ..., target_key: ...}` object per line (or a hub set)."""

    def convert(record: Mapping[str, Any]) -> list[Example]:
        return [_pair(_text(record, source_key), _text(record, target_key))]

    if not _is_local(path):
        return _collect(_hub_records(str(path), split), convert, str(path), skip_bad)
    file = _local_file(path)

    def convert_line(line: str) -> list[Example]:
        return convert(_parse_json_line(line))

    return _collect(_jsonl_records(file), convert_line, str(file), skip_bad)


def load_xsum(path: str | Path, *, split: str = "train", skip_bad: bool = False) -> LoadResult:
    """XSum: hub `EdinburghNLP/xsum` (`document,summary`) or a JSON-lines file of the same."""
    return load_jsonl(
        path, split=split, source_key="document", target_key="summary", skip_bad=skip_bad
    )


TASKS: dict[str, Callable[..., LoadResult]] = {
    "e2e": load_e2e,
    "webnlg": load_webnlg,
    "dart": load_dart,
    "xsum": load_xsum,
    "jsonl": load_jsonl,
}


def load_task(
    name: str, path: str | Path, *, split: str = "train", skip_bad: bool = False, **options: Any
) -> LoadResult:
    """Load task `name` from a file or hub name; `options` go to that task's loader."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](path, split=split, skip_bad=skip_bad, **options)


# --------------------------------------------------------------------------- grouping, splits


def group_references(examples: Iterable[Example]) -> list[EvalGroup]:
    """One group per distinct source, in order of first appearance, references in order."""
    groups: dict[str, EvalGroup] = {}
    for example in examples:
        group = groups.setdefault(example.source, EvalGroup(example.source, []))
        group.references.append(example.target)
    return list(groups.values())


def split_by_source(
    examples: Sequence[Example], n_eval_sources: int | float = 100, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """(train, eval) with no source in both, so eval measures generalization to new inputs.

    `n_eval_sources` is a count of distinct sources, or a fraction of them if a float in
    (0, 1). The choice depends only on (the set of sources in order, seed); both splits keep
    the input order.
    """
    sources = list(dict.fromkeys(example.source for example in examples))
    if isinstance(n_eval_sources, float):
        if not 0.0 < n_eval_sources < 1.0:
            raise ValueError(f"fraction of eval sources must be in (0, 1), got {n_eval_sources}")
        n_eval_sources = round(n_eval_sources * len(sources))
    if not 0 < n_eval_sources < len(sources):
        raise ValueError(
            f"need 0 < n_eval_sources < {len(sources)} distinct sources, got {n_eval_sources}"
        )
    chosen = np.random.default_rng(seed).permutation(len(sources))[:n_eval_sources]
    eval_sources = {sources[i] for i in chosen}
    train = [e for e in examples if e.source not in eval_sources]
    evaluation = [e for e in examples if e.source in eval_sources]
    return train, evaluation
