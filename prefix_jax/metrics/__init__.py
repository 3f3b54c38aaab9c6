"""Multi-reference text-generation metrics, computed the way the official scripts do.

E2E NLG Challenge scores follow its ``e2e-metrics`` package: BLEU and NIST from NIST's
``mteval-v13a.pl`` (lowercased, its own tokenization), ROUGE-L and CIDEr-D from the COCO
caption toolkit (PTB-tokenized, lowercased, punctuation removed), METEOR 1.5 from its Java jar.
Everything is pure Python; only METEOR needs Java and the jar (``find_meteor_jar`` finds the
one an installed ``pycocoevalcap`` ships), and is None without them.

Scale convention (the one of the prefix-tuning paper's tables and of e2e-metrics' printout):
BLEU, METEOR and every ROUGE are percentages on 0-100; NIST and CIDEr are unbounded and are
reported on their native scales (NIST ~0-15, CIDEr ~0-10).

Layout: ``hypotheses[i]`` is one output string and ``references[i]`` the list of *all*
reference strings for the same input (any number >= 1 per segment).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .bleu import bleu, check_inputs, mteval_tokenize, nist
from .cider import cider
from .meteor import find_meteor_jar, meteor, meteor_unavailable
from .rouge import coco_tokenize, lcs_length, rouge, rouge_l, simple_tokenize

__all__ = [
    "bleu",
    "check_inputs",
    "cider",
    "coco_tokenize",
    "find_meteor_jar",
    "lcs_length",
    "meteor",
    "meteor_unavailable",
    "mteval_tokenize",
    "nist",
    "rouge",
    "rouge_l",
    "score_e2e",
    "score_summaries",
    "score_triples",
    "simple_tokenize",
]


def score_e2e(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    meteor_jar: str | Path | None = None,
    *,
    find_jar: bool = False,
) -> dict[str, float | None]:
    """The five E2E metrics: BLEU, NIST, METEOR (None without jar/Java), ROUGE_L, CIDEr.

    With ``find_jar=True`` and no ``meteor_jar``, METEOR uses the jar ``find_meteor_jar``
    finds (an installed ``pycocoevalcap``'s).
    """
    check_inputs(hypotheses, references)
    if meteor_jar is None and find_jar:
        meteor_jar = find_meteor_jar()
    return {
        "BLEU": bleu(hypotheses, references),
        "NIST": nist(hypotheses, references),
        "METEOR": meteor(hypotheses, references, meteor_jar),
        "ROUGE_L": rouge_l(hypotheses, references),
        "CIDEr": cider(hypotheses, references),
    }


def score_triples(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Table-to-text (WebNLG, DART) BLEU: multi-reference corpus BLEU, mteval tokenization."""
    return {"BLEU": bleu(hypotheses, references)}


def score_summaries(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Summarization (XSum) ROUGE-1/2/L F1, best reference per segment, mean over segments."""
    return rouge(hypotheses, references)
