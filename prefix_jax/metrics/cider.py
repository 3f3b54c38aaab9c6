"""CIDEr-D as implemented in the COCO caption toolkit (the E2E scripts' "CIDEr").

Vedantam et al., 2015, "CIDEr: Consensus-based Image Description Evaluation" (CIDEr-D is the
variant with the Gaussian length penalty and clipped n-gram weights).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .bleu import check_inputs, ngram_counts
from .rouge import coco_tokenize

__all__ = ["cider"]

_Vector = dict[tuple[str, ...], float]


def _tfidf(
    counts: Counter[tuple[str, ...]],
    doc_freq: Counter[tuple[str, ...]],
    log_n_docs: float,
    max_n: int,
) -> tuple[list[_Vector], list[float], int]:
    """Per-order tf-idf vectors and their L2 norms, plus the length used by the penalty.

    Weights are raw term counts times (log N - log max(1, df)), as in the toolkit (the paper's
    tf normalisation cancels in the cosine). The toolkit's "length" is the number of *bigrams*
    (it tests the 0-based order index against 1); for non-empty sentences that only shifts both
    lengths by one, so differences -- all the penalty sees -- equal word-count differences.
    """
    vectors: list[_Vector] = [{} for _ in range(max_n)]
    for gram, tf in counts.items():
        vectors[len(gram) - 1][gram] = tf * (log_n_docs - math.log(max(1.0, doc_freq[gram])))
    norms = [math.sqrt(sum(w * w for w in vec.values())) for vec in vectors]
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vectors, norms, length


def cider(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    max_n: int = 4,
    sigma: float = 6.0,
    tokenize: bool = True,
) -> float:
    """Corpus CIDEr-D on its native scale (x10 factor included; ~0-10, E2E systems ~2-2.5).

    Document frequency of an n-gram = number of segments whose reference set contains it;
    N = number of segments. For each segment, reference and order n:
    sum_g min(w_hyp, w_ref) w_ref / (|w_hyp| |w_ref|) * exp(-(len_hyp - len_ref)^2 / (2 sigma^2));
    averaged over n, then over the segment's references, times 10; corpus = mean over segments.
    Because df and N come from the scored corpus, the value depends on the corpus as a whole.
    """
    check_inputs(hypotheses, references)
    split = coco_tokenize if tokenize else str.split
    hyp_counts = [ngram_counts(split(h), max_n) for h in hypotheses]
    ref_counts = [[ngram_counts(split(r), max_n) for r in refs] for refs in references]

    doc_freq: Counter[tuple[str, ...]] = Counter()
    for refs in ref_counts:
        doc_freq.update({gram for ref in refs for gram in ref})
    log_n_docs = math.log(len(hypotheses))

    total = 0.0
    for hyp, refs in zip(hyp_counts, ref_counts, strict=True):
        hyp_vecs, hyp_norms, hyp_len = _tfidf(hyp, doc_freq, log_n_docs, max_n)
        segment = 0.0
        for ref in refs:
            ref_vecs, ref_norms, ref_len = _tfidf(ref, doc_freq, log_n_docs, max_n)
            penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                dot = sum(
                    min(w, ref_vecs[n].get(g, 0.0)) * ref_vecs[n].get(g, 0.0)
                    for g, w in hyp_vecs[n].items()
                )
                if hyp_norms[n] != 0 and ref_norms[n] != 0:
                    dot /= hyp_norms[n] * ref_norms[n]
                segment += dot * penalty
        total += 10.0 * segment / max_n / len(refs)
    return total / len(hypotheses)
