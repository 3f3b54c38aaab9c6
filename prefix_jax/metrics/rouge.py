"""ROUGE-L as in the COCO caption toolkit (used by the E2E scripts) and ROUGE-1/2/L F1 (XSum).

ROUGE: Lin, 2004, "ROUGE: A Package for Automatic Evaluation of Summaries".
COCO caption evaluation: Chen et al., 2015, "Microsoft COCO Captions: Data Collection and
Evaluation Server".

This module also holds ``coco_tokenize``, the tokenizer shared by the COCO-style metrics
(ROUGE-L, CIDEr, METEOR in the E2E setup).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from .bleu import check_inputs

__all__ = ["coco_tokenize", "lcs_length", "rouge", "rouge_l", "simple_tokenize"]

# --------------------------------------------------------------------------------------------
# COCO tokenization: Stanford PTBTokenizer (CoreNLP 3.4.1, -preserveLines -lowerCase), after
# which the COCO toolkit drops the tokens below. Its list spells the bracket tokens in upper
# case ("-LRB-"), which never match the lowercased output, so "-lrb-" etc. survive -- we keep
# that behaviour.
# --------------------------------------------------------------------------------------------
_COCO_DROPPED = frozenset(
    ["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"']
)

_CHAR_MAP = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2026": " ... ",
    "\u2013": " -- ",
    "\u2014": " -- ",
    "\u00a3": " # ",  # PTB writes the pound sign as '#'
    "\u20ac": " $ ",  # ... and the euro as '$'
    "\u00a2": " cents ",
    "(": " -LRB- ",
    ")": " -RRB- ",
    "[": " -LSB- ",
    "]": " -RSB- ",
    "{": " -LCB- ",
    "}": " -RCB- ",
}
_BRACKETS = frozenset(v.strip() for k, v in _CHAR_MAP.items() if k in "()[]{}")
# PTB reads a lone letter before an ellipsis as an initial: "A..." -> "a." + "..."
_LETTER_ELLIPSIS = re.compile(r"(?<![\w.'])([A-Za-z])\.\.\.(?!\.)")
# Always their own token (runs of ?/! stay together, e.g. "?!", as PTB does).
_ALWAYS_SPLIT = re.compile(r'(\.\.\.(?!\.)|[?!]+|[;"$#%*=+\u00a5<>]|--)')
# Comma/colon split off unless between digits (1,000 and 10:30 stay whole).
_COMMA_COLON = re.compile(r"(?<![0-9])([,:])|([,:])(?![0-9])")
# '&' split off unless inside an upper-case acronym such as AT&T.
_AMPERSAND = re.compile(r"(?<![A-Z])&|&(?![A-Z])")
_CLITICS = frozenset(["n't", "'s", "'m", "'d", "'re", "'ve", "'ll"])
_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'m|'d|'re|'ve|'ll)$", re.IGNORECASE)
_SPLIT_WORDS = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "gotta": ["got", "ta"],
    "wanna": ["wan", "na"],
    "lemme": ["lem", "me"],
    "gimme": ["gim", "me"],
}
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc inc ltd co corp mt ave rd est".split()
)
_LETTER_DOTS = re.compile(r"^(?:[a-z]\.)+$", re.IGNORECASE)
# PTB keeps a word's period when a comma, semicolon or colon follows it ("center.," ->
# "center." ","); we hide such periods from the splitting below and restore them after.
_PERIOD_BEFORE_PUNCT = re.compile(r"(?<=[A-Za-z])\.(?=[,;:])")
_KEPT_PERIOD = "\x00"


def _split_chunk(chunk: str) -> list[str]:
    """PTB-style splitting of one whitespace-free chunk (quotes, periods, contractions)."""
    if chunk.strip("-") == "" or chunk in _BRACKETS or chunk.lower() in _CLITICS:
        return [chunk]
    head: list[str] = []
    tail: list[str] = []
    while chunk[:1] in ("'", "`"):  # opening single quote
        head.append("`")
        chunk = chunk[1:]
    while chunk[:1] in (".", "-") and chunk[1:2].isalpha():  # ".price", "-friendly"
        head.append(chunk[0])
        chunk = chunk[1:]
    while True:
        if chunk[-1:] in ("'", "`", "-"):  # closing quote, dangling hyphen ("20-" of "20-$30")
            tail.insert(0, chunk[-1])
            chunk = chunk[:-1]
        elif chunk.endswith(".") and not (
            _LETTER_DOTS.match(chunk) or chunk[:-1].lower() in _ABBREVIATIONS
        ):
            tail.insert(0, ".")
            chunk = chunk[:-1]
        else:
            break
    if not chunk:
        return head + tail
    clitics: list[str] = []  # "don't's" -> do n't 's
    while (match := _CONTRACTION.match(chunk)) is not None:
        chunk = match.group(1)
        clitics.insert(0, match.group(2))
    body = _SPLIT_WORDS.get(chunk.lower(), [chunk])
    return head + body + clitics + tail


def coco_tokenize(text: str) -> list[str]:
    """Approximate the COCO toolkit's tokenization: PTB tokens, lowercased, punctuation dropped.

    The toolkit runs the Java Stanford PTBTokenizer; we re-implement the rules that matter for
    data-to-text outputs (punctuation, quotes, brackets, contractions such as "it 's" and
    "do n't", currency symbols, abbreviations). Rare corner cases of the Java tokenizer are not
    reproduced.
    """
    for old, new in _CHAR_MAP.items():
        text = text.replace(old, new)
    text = _LETTER_ELLIPSIS.sub(r"\1. ...", text)
    text = _PERIOD_BEFORE_PUNCT.sub(_KEPT_PERIOD, text)
    text = _ALWAYS_SPLIT.sub(r" \1 ", text)
    text = _COMMA_COLON.sub(lambda m: f" {m.group(1) or m.group(2)} ", text)
    text = _AMPERSAND.sub(" & ", text)
    tokens: list[str] = []
    for chunk in text.split():
        tokens.extend(_split_chunk(chunk))
    tokens = [t.replace(_KEPT_PERIOD, ".").lower() for t in tokens]
    return [t for t in tokens if t not in _COCO_DROPPED]


def simple_tokenize(text: str) -> list[str]:
    """Lowercase and keep maximal runs of ASCII letters/digits (rouge-score's default, no
    stemming); used for summarization ROUGE where punctuation carries no credit."""
    return re.findall(r"[a-z0-9]+", text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a)*len(b)) DP)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    beta: float = 1.2,
    tokenize: bool = True,
) -> float:
    """COCO-caption ROUGE-L on a 0-100 scale (the COCO toolkit prints 0-1).

    Per segment: LCS precision and recall against each reference, take the *max* precision
    and the *max* recall separately (possibly from different references), then
    F = (1 + beta^2) P R / (R + beta^2 P). Corpus score = mean over segments.
    With ``tokenize=False`` the strings are split on whitespace as given.
    """
    check_inputs(hypotheses, references)
    split = coco_tokenize if tokenize else str.split
    total = 0.0
    for hyp, refs in zip(hypotheses, references, strict=True):
        hyp_tokens = split(hyp)
        precision = recall = 0.0
        for ref in refs:
            ref_tokens = split(ref)
            lcs = lcs_length(hyp_tokens, ref_tokens)
            if hyp_tokens:
                precision = max(precision, lcs / len(hyp_tokens))
            if ref_tokens:
                recall = max(recall, lcs / len(ref_tokens))
        if precision > 0 and recall > 0:
            total += (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    return 100.0 * total / len(hypotheses)


def _f1(overlap: int, hyp_total: int, ref_total: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / hyp_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def _ngram_counter(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 (0-100), as reported for XSum.

    Per segment and metric, F1 against each reference, keeping the best reference (like
    rouge-score's multi-reference mode); corpus score = mean over segments. Tokens come from
    ``simple_tokenize`` (lowercase alphanumeric runs, no stemming). ROUGE-L here is the
    sentence-level LCS F1 (beta = 1), not the summary-level ROUGE-Lsum.
    """
    check_inputs(hypotheses, references)
    sums = {"ROUGE-1": 0.0, "ROUGE-2": 0.0, "ROUGE-L": 0.0}
    for hyp, refs in zip(hypotheses, references, strict=True):
        hyp_tokens = simple_tokenize(hyp)
        best = dict.fromkeys(sums, 0.0)
        for ref in refs:
            ref_tokens = simple_tokenize(ref)
            for n in (1, 2):
                hyp_grams, ref_grams = _ngram_counter(hyp_tokens, n), _ngram_counter(ref_tokens, n)
                overlap = sum((hyp_grams & ref_grams).values())
                f1 = _f1(overlap, sum(hyp_grams.values()), sum(ref_grams.values()))
                best[f"ROUGE-{n}"] = max(best[f"ROUGE-{n}"], f1)
            f1 = _f1(lcs_length(hyp_tokens, ref_tokens), len(hyp_tokens), len(ref_tokens))
            best["ROUGE-L"] = max(best["ROUGE-L"], f1)
        for key in sums:
            sums[key] += best[key]
    return {key: 100.0 * value / len(hypotheses) for key, value in sums.items()}
