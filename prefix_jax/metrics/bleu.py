"""Corpus BLEU and NIST as the E2E challenge's scorer (e2e-metrics) computes them.

BLEU: Papineni et al., 2002, "BLEU: a Method for Automatic Evaluation of Machine Translation".
NIST: Doddington, 2002, "Automatic Evaluation of Machine Translation Quality Using N-gram
Co-Occurrence Statistics".

e2e-metrics computes both with NIST's ``mteval-v13a.pl`` or with its Python port
``metrics/pymteval.py``. BLEU here is mteval-v13a's, which the port equals whenever every
output has at least 4 tokens and every n-gram order has a match somewhere in the corpus (on
such corpora it is tested equal to the port). NIST follows the port, which papers report and
which differs from the Perl script on corpora with a variable number of references (see
``nist``).

Text is lowercased (mteval-v13a without ``-c``; for BLEU ASCII letters only, like the script's
``tr/A-Z/a-z/``) around its tokenization; this is the default here too.
Everything below is accumulated over the whole corpus before the final formula, as mteval's
system-level score does.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = [
    "bleu",
    "bleu_from_stats",
    "bleu_of_sums",
    "bleu_segment_stats",
    "check_inputs",
    "mteval_tokenize",
    "ngram_counts",
    "nist",
]

# mteval-v13a "tokenize punctuation" class: every ASCII symbol except  ' , - .  (those are
# handled by the context-dependent rules that follow it).
_MTEVAL_SYMBOLS = re.compile(r"([{-~\[-` -&(-+:-@/])")
_MTEVAL_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")
_MTEVAL_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")
_MTEVAL_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_ASCII_UPPER_TO_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Validate the corpus layout shared by every metric of this package.

    ``references[i]`` holds *all* references of segment ``i`` (not sacrebleu's transposed
    "one stream per reference" layout); a bare string there would silently be scored as a list
    of one-character references, so it is rejected.
    """
    if isinstance(hypotheses, str):
        raise ValueError("hypotheses must be a list of strings, not a single string")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"got {len(hypotheses)} hypotheses but {len(references)} reference sets; "
            "they must be aligned one reference set per hypothesis"
        )
    if len(hypotheses) == 0:
        raise ValueError("cannot score an empty corpus")
    for i, (hyp, refs) in enumerate(zip(hypotheses, references, strict=True)):
        if not isinstance(hyp, str):
            raise ValueError(f"hypothesis {i} is {type(hyp).__name__}, expected str")
        if isinstance(refs, str):
            raise ValueError(
                f"references[{i}] is a str; expected a list of reference strings for segment {i}"
            )
        if len(refs) == 0:
            raise ValueError(f"segment {i} has no reference")
        for ref in refs:
            if not isinstance(ref, str):
                raise ValueError(f"a reference of segment {i} is {type(ref).__name__}, not str")


def mteval_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Tokenize like mteval-v13a's default ("non-international") normalization.

    Also used by sacrebleu's ``13a`` tokenizer, so BLEU here is comparable with it.
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    text = (
        text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    )
    text = f" {text} "
    if lowercase:
        text = text.translate(_ASCII_UPPER_TO_LOWER)
    text = _MTEVAL_SYMBOLS.sub(r" \1 ", text)
    text = _MTEVAL_PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", text)
    text = _MTEVAL_PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", text)
    text = _MTEVAL_DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return text.split()


def ngram_counts(tokens: Sequence[str], max_n: int) -> Counter[tuple[str, ...]]:
    """All n-grams of ``tokens`` for n = 1..max_n with their counts (keys are token tuples)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def _closest_ref_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """mteval's 'closest' reference length: ties go to the shorter one; empty refs are skipped
    (mteval ignores a zero-length reference unless it is the first one)."""
    best = ref_lens[0]
    for length in ref_lens[1:]:
        if length == 0:
            continue
        if abs(hyp_len - length) < abs(hyp_len - best) or (
            abs(hyp_len - length) == abs(hyp_len - best) and length < best
        ):
            best = length
    return best


def _max_ref_counts(refs: Sequence[Sequence[str]], max_n: int) -> Counter[tuple[str, ...]]:
    """For each n-gram, the largest count it has in any one reference (the clipping ceiling)."""
    ceiling: Counter[tuple[str, ...]] = Counter()
    for ref in refs:
        for gram, count in ngram_counts(ref, max_n).items():
            if count > ceiling[gram]:
                ceiling[gram] = count
    return ceiling


def bleu_segment_stats(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    max_n: int = 4,
    lowercase: bool = True,
) -> list[list[int]]:
    """Per segment, the sufficient statistics of corpus BLEU: ``[matches_1..matches_max_n,
    totals_1..totals_max_n, hyp_length, closest_ref_length]`` (clipped n-gram matches,
    hypothesis n-grams, lengths). Corpus BLEU is ``bleu_from_stats`` of their column sums,
    so a bootstrap over segments resamples rows instead of re-tokenizing."""
    check_inputs(hypotheses, references)
    rows = []
    for hyp, refs in zip(hypotheses, references, strict=True):
        hyp_tokens = mteval_tokenize(hyp, lowercase)
        ref_tokens = [mteval_tokenize(r, lowercase) for r in refs]
        ceiling = _max_ref_counts(ref_tokens, max_n)
        matches = [0] * max_n
        for gram, count in ngram_counts(hyp_tokens, max_n).items():
            matches[len(gram) - 1] += min(count, ceiling[gram])
        totals = [max(len(hyp_tokens) - n + 1, 0) for n in range(1, max_n + 1)]
        ref_length = _closest_ref_length(len(hyp_tokens), [len(r) for r in ref_tokens])
        rows.append([*matches, *totals, len(hyp_tokens), ref_length])
    return rows


def bleu_from_stats(stats: Sequence[float], max_n: int = 4) -> float:
    """Corpus BLEU (0-100) from summed ``bleu_segment_stats`` rows; see ``bleu``."""
    return float(bleu_of_sums(np.asarray(stats), max_n)[0])


def bleu_of_sums(sums: np.ndarray, max_n: int = 4) -> np.ndarray:
    """Corpus BLEU (0-100) of each row of summed ``bleu_segment_stats`` ([k, 2 max_n + 2]
    or one row), vectorized so a bootstrap scores all its resamples at once.

    mteval's smoothing: an order with n-grams but no match counts as 1 / (2^k * total), k
    the number of such orders so far; an order with no n-grams at all counts as a perfect
    precision (log 1). An empty corpus of hypotheses scores 0.
    """
    sums = np.atleast_2d(np.asarray(sums, dtype=np.float64))
    matches, totals = sums[:, :max_n], sums[:, max_n : 2 * max_n]
    hyp_length, ref_length = sums[:, 2 * max_n], sums[:, 2 * max_n + 1]
    log_precision = np.zeros(len(sums))
    smooth = np.ones(len(sums))
    for n in range(max_n):
        m, t = matches[:, n], totals[:, n]
        smooth = np.where((t > 0) & (m == 0), 2 * smooth, smooth)
        safe_t = np.where(t > 0, t, 1.0)
        term = np.where(m > 0, np.log(np.where(m > 0, m, 1.0) / safe_t), -np.log(smooth * safe_t))
        log_precision += np.where(t > 0, term, 0.0)
    safe_hyp = np.where(hyp_length > 0, hyp_length, 1.0)
    brevity = np.exp(np.minimum(0.0, 1.0 - ref_length / safe_hyp))
    return np.where(hyp_length > 0, 100.0 * brevity * np.exp(log_precision / max_n), 0.0)


def bleu(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    max_n: int = 4,
    lowercase: bool = True,
) -> float:
    """Corpus BLEU on a 0-100 scale, reproducing mteval-v13a's system score.

    Clipped n-gram matches (clip = max count in any single reference) and hypothesis n-gram
    totals are summed over the corpus; the brevity penalty uses, per segment, the reference
    length closest to the hypothesis length (ties -> shorter), summed over the corpus.

    mteval-v13a's default (used by the E2E scripts) is its smoothed BLEU: an order with zero
    matches contributes 1 / (2^k * total) instead of 0 (k counts such orders), and an order with
    no hypothesis n-grams at all contributes precision 1. On real test sets neither case occurs
    and the score equals plain BLEU; we keep them so tiny corpora also match the script.
    """
    rows = bleu_segment_stats(hypotheses, references, max_n, lowercase)
    return bleu_from_stats([sum(column) for column in zip(*rows, strict=True)], max_n)


def _nist_length_penalty(ratio: float) -> float:
    """exp(-beta * log(ratio)^2), beta set so a 2/3 hyp/ref length ratio scores 0.5."""
    if ratio >= 1.0:
        return 1.0
    if ratio <= 0.0:
        return 0.0
    beta = -math.log(0.5) / math.log(1.5) ** 2
    return math.exp(-beta * math.log(ratio) ** 2)


def _pymteval_tokens(text: str, lowercase: bool) -> list[str]:
    """Tokens as the E2E scorer's NIST sees them: mteval tokenization, then Python's full
    Unicode ``str.lower`` per token (not mteval's ASCII-only one); an empty text is one empty
    token, as its ``split(' ')`` leaves it."""
    tokens = mteval_tokenize(text, lowercase=False)
    if lowercase:
        tokens = [t.lower() for t in tokens]
    return tokens or [""]


def nist(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    max_n: int = 5,
    lowercase: bool = True,
) -> float:
    """Corpus NIST score (native scale, ~0-15), equal to the E2E challenge scorer's.

    Information weight of n-gram w1..wn = log2(count(w1..wn-1) / count(w1..wn)), counts taken
    over every reference of the corpus (for unigrams, the numerator is the total reference word
    count). Score = sum over n of (info of clipped matches / number of hypothesis n-grams),
    times exp(-beta log^2(min(1, L_hyp / L_ref))).

    We follow the E2E scorer's Python NIST (``metrics/pymteval.py`` of e2e-metrics), which is
    what papers report; it departs from mteval-v13a in two places, both reproduced here:

    * L_ref is the sum over segments of the *mean* length of that segment's references. (The
      Perl route of e2e-metrics instead pads every segment's references with empty ones up to
      the largest count and divides all reference words by that count, so with a variable
      number of references L_ref comes out far too small and the length penalty vanishes; that
      is what this function used to do, and why it reported 7.84 where the scorer gave 7.24.)
    * The number of hypothesis n-grams of a segment is counted as len - n + 1 even when that
      is negative (a 2-token output "has" -2 five-grams), so short outputs raise the score.
      An order whose corpus count is 0 (where the scorer would divide by zero) adds nothing.
    """
    check_inputs(hypotheses, references)
    hyp_tokens = [_pymteval_tokens(h, lowercase) for h in hypotheses]
    ref_tokens = [[_pymteval_tokens(r, lowercase) for r in refs] for refs in references]

    # Information weights from all references of the corpus.
    corpus_counts: Counter[tuple[str, ...]] = Counter()
    total_ref_words = 0
    for refs in ref_tokens:
        for ref in refs:
            corpus_counts.update(ngram_counts(ref, max_n))
            total_ref_words += len(ref)

    def info(gram: tuple[str, ...]) -> float:
        context = corpus_counts[gram[:-1]] if len(gram) > 1 else total_ref_words
        return math.log2(context / corpus_counts[gram])

    matched_info = [0.0] * (max_n + 1)
    totals = [0] * (max_n + 1)
    ref_length = 0.0
    for hyp, refs in zip(hyp_tokens, ref_tokens, strict=True):
        ceiling = _max_ref_counts(refs, max_n)
        for gram, count in ngram_counts(hyp, max_n).items():
            clipped = min(count, ceiling[gram])
            if clipped:
                matched_info[len(gram)] += info(gram) * clipped
        for n in range(1, max_n + 1):
            totals[n] += len(hyp) - n + 1  # may be negative, see the docstring
        ref_length += sum(len(ref) for ref in refs) / len(refs)

    score = sum(matched_info[n] / totals[n] for n in range(1, max_n + 1) if totals[n] != 0)
    ratio = totals[1] / ref_length if ref_length > 0 else 1.0
    return score * _nist_length_penalty(ratio)
