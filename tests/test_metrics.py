"""Metric tests: hand-computed values on tiny corpora (arithmetic in the comments), plus
optional cross-checks against sacrebleu / rouge-score / nltk / pycocoevalcap (the COCO toolkit,
which also ships the Stanford PTB tokenizer and METEOR 1.5 jars) when those are installed."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import math
import random
import shutil
import sys
from pathlib import Path

import pytest

from prefix_jax.metrics import (
    bleu,
    cider,
    coco_tokenize,
    find_meteor_jar,
    lcs_length,
    meteor,
    meteor_unavailable,
    mteval_tokenize,
    nist,
    rouge,
    rouge_l,
    score_e2e,
    score_summaries,
    score_triples,
    simple_tokenize,
)
from prefix_jax.metrics.bleu import _nist_length_penalty

LN = math.log
LOG2 = math.log2


# ------------------------------------------------------------------------------------ BLEU --


# Seg A: hyp "the the the cat sat" (5 tokens); refs of lengths 3 and 7.
#   1-grams: the x3 clipped to 2 (max count in ONE ref: R2 has two "the"), cat, sat -> 4/5
#   2-grams: the the x2 (no), the cat, cat sat -> 2/4
#   3-grams: the the the, the the cat (no), the cat sat -> 1/3
#   4-grams: none of 2 match -> 0/2
#   closest ref length: |5-3| == |5-7| -> tie -> the shorter, 3
# Seg B: hyp "a small dog runs in the park" (7); ref lengths 8, 3, 9 -> closest 8
#   1-grams 7/7; 2-grams 5/6 ("the park" misses); 3-grams 4/5; 4-grams 3/4
# Seg C: hyp "good food" (2); ref lengths 4, 5 -> closest 4
#   1-grams 2/2; 2-grams 1/1; no 3- or 4-grams
# Corpus: p1 = 13/14, p2 = 8/11, p3 = 5/8, p4 = 3/6; c = 14, r = 3 + 8 + 4 = 15
# BLEU = exp(1 - 15/14) * (13/14 * 8/11 * 5/8 * 1/2) ** (1/4) = 0.63106
BLEU_HYPS = ["the the the cat sat", "a small dog runs in the park", "good food"]
BLEU_REFS = [
    ["the cat sat", "the cat sat on the red mat"],
    ["a small dog runs in a big park", "the dog runs", "a small dog runs in the green park today"],
    ["really good food here", "good food in the city"],
]


def test_bleu_multi_reference_clipping_and_closest_length():
    expected = math.exp(1 - 15 / 14) * (13 / 14 * 8 / 11 * 5 / 8 * 1 / 2) ** 0.25
    assert bleu(BLEU_HYPS, BLEU_REFS) == pytest.approx(100 * expected, rel=1e-12)
    assert bleu(BLEU_HYPS, BLEU_REFS) == pytest.approx(63.106, abs=1e-3)
    # Had the tie gone to the longer reference (7), r = 19 and the penalty exp(1 - 19/14).
    # Had clipping used the summed reference counts, p1 would be 14/14.


def test_bleu_mteval_smoothing_of_empty_order():
    # Seg A alone: p = 4/5, 2/4, 1/3 and no 4-gram match -> mteval-v13a's default smoothing
    # uses 1 / (2^1 * 2) for it; r = 3 < c = 5 so no penalty: (4/5 * 1/2 * 1/3 * 1/4)^(1/4).
    assert bleu(BLEU_HYPS[:1], BLEU_REFS[:1]) == pytest.approx(100 * (1 / 30) ** 0.25)


def test_bleu_perfect_match_and_case():
    refs = [["The Eagle, near Café Rouge, is cheap.", "other"], ["Good food.", "x y"]]
    hyps = ["the eagle , near café rouge , is cheap .", "GOOD FOOD."]
    # Case-insensitive like mteval without -c; "good food ." has no 4-gram: precision 1.
    assert bleu(hyps, refs) == pytest.approx(100.0)
    assert bleu(hyps, refs, lowercase=False) < 100.0
    # No match at all: orders 1..4 smooth to 1/(2*4), 1/(4*3), 1/(8*2), 1/(16*1).
    expected = (1 / 8 * 1 / 12 * 1 / 16 * 1 / 16) ** 0.25
    assert bleu(["a b c d"], [["x y z w"]]) == pytest.approx(100 * expected)
    assert bleu([""], [["a b"]]) == 0.0


def test_mteval_tokenization():
    text = 'It\'s £20-25, e.g. 3.5 stars. (Near "Café") 1,000&more'
    assert mteval_tokenize(text) == [
        "it's", "£20", "-", "25", ",", "e", ".", "g", ".", "3.5", "stars", ".",
        "(", "near", '"', "café", '"', ")", "1,000", "&", "more",
    ]  # fmt: skip
    assert mteval_tokenize("ABC", lowercase=False) == ["ABC"]


# ------------------------------------------------------------------------------------ NIST --


def test_nist_length_penalty_is_half_at_two_thirds():
    assert _nist_length_penalty(2 / 3) == pytest.approx(0.5)
    assert _nist_length_penalty(1.3) == 1.0
    assert _nist_length_penalty(0.0) == 0.0


def test_nist_two_references():
    # Refs (all): "a b c", "a b d", "b c", "c" -> 9 words; counts a2 b3 c3 d1, "a b"2 "b c"2
    # "b d"1, "a b c"1, "a b d"1. Info = log2(count(prefix) / count(ngram)), prefix of a
    # unigram = 9 words: a log2(9/2), b = c = log2(3), "a b" log2(2/2)=0, "b c" log2(3/2),
    # "a b c" log2(2/1) = 1.
    # Seg 1 "a b c" matches a, b, c, "a b", "b c", "a b c"; seg 2 "b a" matches only b.
    # Hyp n-gram totals, counted len - n + 1 per segment like the E2E scorer: 5, 3, 1, -1, -3
    # (orders 4 and 5 have no match, so their sign does not matter here).
    # Score = (log2 4.5 + 3 log2 3)/5 + log2(1.5)/3 + 1/1; hyp 5 words vs reference length
    # 3 + 1.5 (mean per segment) -> no length penalty.
    hyps = ["a b c", "b a"]
    refs = [["a b c", "a b d"], ["b c", "c"]]
    expected = (LOG2(4.5) + 3 * LOG2(3)) / 5 + LOG2(1.5) / 3 + 1.0
    assert nist(hyps, refs) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(2.57995, abs=1e-5)


def test_nist_length_penalty_uses_mean_reference_length_per_segment():
    # Refs: "a b c d", "a b c d e f" | "c d e" -> 13 words; a2 b2 c3 d3 e2 f1, "a b" 2.
    # Seg 1 "a b": a, b (log2(13/2) each), "a b" (log2(2/2) = 0); seg 2 "c": log2(13/3).
    # Totals: 3 unigrams, 1 bigram. Score = (2 log2 6.5 + log2(13/3)) / 3.
    # Length, as the E2E scorer's pymteval.py: the mean reference length of each segment,
    # summed: (4 + 6) / 2 + 3 = 8, so ratio = 3 / 8. (mteval-v13a as the E2E Perl route runs
    # it pads segment 2 with an empty reference and uses 13 / 2 = 6.5: penalty 0.080, not 0.017.)
    hyps = ["a b", "c"]
    refs = [["a b c d", "a b c d e f"], ["c d e"]]
    beta = LN(2) / LN(1.5) ** 2
    penalty = math.exp(-beta * LN(3 / 8) ** 2)
    expected = (2 * LOG2(6.5) + LOG2(13 / 3)) / 3 * penalty
    assert nist(hyps, refs) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.043387, abs=1e-6)


# ------------------------------------------------------------ the official E2E scorer --
#
# Reference numbers from the E2E challenge scorer, github.com/tuetschek/e2e-metrics, run once:
# BLEU and NIST from its metrics/pymteval.py, ROUGE-L and CIDEr from the COCO caption code it
# calls (pycocoevalcap 1.2 from PyPI, the same scorers and Java PTB tokenizer that e2e-metrics
# vendors), exactly as its measure_scores.py -p does (BLEU on 0-1, ROUGE_L on 0-1), with
# /tmp/e2e-metrics a copy of that repository (only metrics/pymteval.py is used):
#
#   pip install --no-deps --target /tmp/offpkgs pycocoevalcap==1.2 future
#   PYTHONPATH=/tmp/e2e-metrics:/tmp/offpkgs \
#       python tests/data/make_e2e_official_fixture.py score tests/data/e2e_official_fixture.json
#
# Before NIST followed pymteval.py, ours gave 6.452945 here for the scorer's 5.618768.

E2E_FIXTURE = Path(__file__).parent / "data" / "e2e_official_fixture.json"
E2E_OFFICIAL = {
    "BLEU": 0.3878616865066064,
    "NIST": 5.6187677377522816,
    "ROUGE_L": 0.531819756325387,
    "CIDEr": 1.201029315071196,
}


def test_e2e_metrics_equal_official_scorer():
    # 300 E2E devset segments with 1-6 references each (tests/data/make_e2e_official_fixture.py
    # says how they were cut and degraded).
    segments = json.loads(E2E_FIXTURE.read_text(encoding="utf-8"))["segments"]
    assert len(segments) == 300
    hyps = [seg["hyp"] for seg in segments]
    refs = [seg["refs"] for seg in segments]
    assert bleu(hyps, refs) == pytest.approx(100 * E2E_OFFICIAL["BLEU"], rel=1e-9)
    assert nist(hyps, refs) == pytest.approx(E2E_OFFICIAL["NIST"], rel=1e-9)
    assert rouge_l(hyps, refs) == pytest.approx(100 * E2E_OFFICIAL["ROUGE_L"], rel=1e-9)
    assert cider(hyps, refs) == pytest.approx(E2E_OFFICIAL["CIDEr"], rel=1e-9)


def test_nist_equals_official_scorer_on_short_outputs():
    # Outputs shorter than 5 tokens (the scorer counts a 1-token output as having -3 five-grams),
    # an empty output (one empty token to the scorer) and non-ASCII capitals (lowercased by
    # Python's str.lower there). Reference: pymteval.py's NISTScore, with case.json holding
    # [hyps, refs] below and the same paths as above:
    #   PYTHONPATH=/tmp/e2e-metrics:/tmp/offpkgs python -c "import json; \
    #     from metrics.pymteval import NISTScore; s = NISTScore(); \
    #     [s.append(h, r) for h, r in zip(*json.load(open('case.json')))]; print(s.score())"
    # Ours gave 3.500696 before.
    hyps = ["Zizzi", "", "The Eagle is cheap.", "ÉCLAIR café is near the river"]
    refs = [
        ["Zizzi is a pub.", "Zizzi serves food."],
        ["The Punter is cheap."],
        ["The Eagle is a cheap pub in the city centre.", "Cheap: The Eagle.", "The Eagle, cheap."],
        ["Éclair Café is by the river.", "ÉCLAIR CAFÉ, near the river"],
    ]
    assert nist(hyps, refs) == pytest.approx(1.2340378392870204, rel=1e-9)


# --------------------------------------------------------------------------------- ROUGE-L --


def test_lcs_length():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_coco_max_precision_and_recall_separately():
    # Seg 1: hyp "a b c d" vs "a b c": LCS 3 -> P 3/4, R 1; vs "a b c d e f g h": LCS 4 ->
    #   P 1, R 1/2. COCO takes max P = 1 and max R = 1 (different refs) -> F = 1.
    # Seg 2: hyp "x y z w" vs "y x w": LCS 2 -> P 1/2, R 2/3,
    #   F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * (1/3) / (2/3 + 0.72) = 0.586538...
    hyps = ["a b c d", "x y z w"]
    refs = [["a b c", "a b c d e f g h"], ["y x w"]]
    f2 = 2.44 * 0.5 * (2 / 3) / (2 / 3 + 1.44 * 0.5)
    assert rouge_l(hyps, refs) == pytest.approx(100 * (1 + f2) / 2, rel=1e-12)
    assert rouge_l(hyps, refs) == pytest.approx(79.3269, abs=1e-4)
    assert rouge_l([""], [["a"]]) == 0.0


# ----------------------------------------------------------------------------------- CIDEr --


def test_cider_d_three_segments():
    # N = 3 segments. Document frequency over reference sets: "a" in segs 1, 2 -> 2; every
    # other n-gram in one set. idf: a -> alpha = ln3 - ln2; the rest (and n-grams found in no
    # reference, df 0 -> log max(1, 0) = 0) -> gamma = ln3. Weights = count * idf.
    # Penalty length = number of bigrams (toolkit quirk), sigma = 6 -> exp(-d^2 / 72).
    # Seg 1 hyp "a b": vs "a b": cos1 = cos2 = 1, d = 0 -> 2
    #                  vs "a c": cos1 = alpha^2 / (alpha^2 + gamma^2), cos2 = 0 -> ratio
    #   score = 10 * (2 + ratio) / 4 orders / 2 refs
    # Seg 2 hyp "a" vs "a d": cos1 = alpha / sqrt(alpha^2 + gamma^2); bigram lengths 0 vs 1
    #   score = 10 * cos1 * exp(-1/72) / 4
    # Seg 3 hyp "e e" vs "e": clipped dot min(2g, g) * g = g^2 over norms 2g * g -> 1/2;
    #   "e e" absent from ref -> 0; lengths 1 vs 0 -> score = 10 * 0.5 * exp(-1/72) / 4
    hyps = ["a b", "a", "e e"]
    refs = [["a b", "a c"], ["a d"], ["e"]]
    alpha, gamma = LN(3) - LN(2), LN(3)
    norm2 = alpha**2 + gamma**2
    seg1 = 10 * (2 + alpha**2 / norm2) / 4 / 2
    seg2 = 10 * alpha / math.sqrt(norm2) * math.exp(-1 / 72) / 4
    seg3 = 10 * 0.5 * math.exp(-1 / 72) / 4
    expected = (seg1 + seg2 + seg3) / 3
    assert cider(hyps, refs) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1.57876, abs=1e-5)


def test_cider_perfect_two_segment_corpus():
    # N = 2, every n-gram df 1 -> all idf ln2. Seg 1 identical: cos = 1 for n = 1, 2 and 0 for
    # n = 3, 4 (empty) -> 10 * 2/4 = 5. Seg 2 "c" vs "c d": cos1 = 1/sqrt2, lengths 0 vs 1
    # -> 10 * (1/sqrt2) * exp(-1/72) / 4.
    expected = (5 + 10 / math.sqrt(2) * math.exp(-1 / 72) / 4) / 2
    assert cider(["a b", "c"], [["a b"], ["c d"]]) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------- ROUGE-1/2 --


def test_rouge_1_2_l_f1_best_reference():
    # Seg 1: "the cat sat on the mat" vs "the cat is on the mat" (the other ref scores 0):
    #   R-1 overlap the2 cat on mat = 5 of 6 / 6 -> 5/6; R-2 overlap "the cat", "on the",
    #   "the mat" = 3 of 5 / 5 -> 3/5; LCS "the cat on the mat" = 5 -> 5/6.
    # Seg 2: "Hello, World!" -> [hello, world] vs [hello, world, again]:
    #   R-1 P 1, R 2/3 -> 0.8; R-2 P 1, R 1/2 -> 2/3; R-L 0.8.
    hyps = ["the cat sat on the mat", "Hello, World!"]
    refs = [["the cat is on the mat", "a dog"], ["hello world again"]]
    scores = rouge(hyps, refs)
    assert scores["ROUGE-1"] == pytest.approx(100 * (5 / 6 + 0.8) / 2)
    assert scores["ROUGE-2"] == pytest.approx(100 * (3 / 5 + 2 / 3) / 2)
    assert scores["ROUGE-L"] == pytest.approx(100 * (5 / 6 + 0.8) / 2)
    assert score_summaries(hyps, refs) == scores
    assert simple_tokenize("Don't PANIC: 42!") == ["don", "t", "panic", "42"]


# ------------------------------------------------------------------------------ tokenizers --


def test_coco_tokenize_ptb_rules():
    assert coco_tokenize("It's family-friendly (near £20-25)! Don't, cannot.") == [
        "it", "'s", "family-friendly", "-lrb-", "near", "#", "20-25", "-rrb-",
        "do", "n't", "can", "not",
    ]  # fmt: skip
    assert coco_tokenize('He said "hi" to the Punters\' Mr. Smith, 1,000 times... ok?!') == [
        "he", "said", "hi", "to", "the", "punters", "mr.", "smith", "1,000", "times", "ok", "?!",
    ]  # fmt: skip
    # From the E2E devset: PTB splits a period or hyphen off the start of a word but keeps a
    # word's period before a comma, semicolon or colon.
    assert coco_tokenize("food .price, family -friendly, in the city center., near") == [
        "food", "price", "family", "friendly", "in", "the", "city", "center.", "near",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- METEOR --


def test_meteor_none_without_jar_or_java(tmp_path):
    hyps, refs = ["a b"], [["a b"]]
    assert meteor(hyps, refs, None) is None
    fake_jar = tmp_path / "meteor-1.5.jar"
    fake_jar.write_bytes(b"")
    assert meteor(hyps, refs, fake_jar, java="no-such-java-binary-xyz") is None
    with pytest.raises(FileNotFoundError, match="METEOR jar not found"):
        meteor(hyps, refs, tmp_path / "missing.jar")


# ------------------------------------------------------------------------------ wrappers ----


def test_score_wrappers():
    scores = score_e2e(BLEU_HYPS, BLEU_REFS)
    assert set(scores) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
    assert scores["METEOR"] is None
    assert scores["BLEU"] == pytest.approx(bleu(BLEU_HYPS, BLEU_REFS))
    assert score_triples(BLEU_HYPS, BLEU_REFS) == {"BLEU": scores["BLEU"]}


@pytest.mark.parametrize(
    "fn", [bleu, nist, rouge_l, cider, rouge, score_e2e, score_triples, score_summaries]
)
def test_input_errors(fn):
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        fn(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="segment 1 has no reference"):
        fn(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="is a str"):
        fn(["a"], ["a"])
    with pytest.raises(ValueError, match="empty corpus"):
        fn([], [])


def test_meteor_input_errors():
    with pytest.raises(ValueError):
        meteor(["a", "b"], [["a"]], None)


def _fake_package(monkeypatch, locations: list[Path] | None):
    """Make `find_meteor_jar` see a pycocoevalcap package at `locations` (None: not installed)."""
    module = importlib.import_module("prefix_jax.metrics.meteor")  # the module, not the function

    def find_spec(name):
        assert name == "pycocoevalcap"
        if locations is None:
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(p) for p in locations]
        return spec

    monkeypatch.setattr(module, "find_spec", find_spec)


def test_find_meteor_jar_in_installed_pycocoevalcap(tmp_path, monkeypatch):
    bare, full = tmp_path / "bare" / "pycocoevalcap", tmp_path / "full" / "pycocoevalcap"
    for root in (bare, full):
        (root / "meteor").mkdir(parents=True)
        (root / "meteor" / "meteor-1.5.jar").write_bytes(b"")
    (full / "meteor" / "data").mkdir()
    (full / "meteor" / "data" / "paraphrase-en.gz").write_bytes(b"")
    _fake_package(monkeypatch, [bare, full])  # a jar without its paraphrase table is skipped
    assert find_meteor_jar() == full / "meteor" / "meteor-1.5.jar"
    _fake_package(monkeypatch, [bare])
    assert find_meteor_jar() is None


def test_meteor_absent_says_how_to_get_it(tmp_path, monkeypatch):
    _fake_package(monkeypatch, None)
    assert find_meteor_jar() is None
    assert score_e2e(BLEU_HYPS, BLEU_REFS, find_jar=True)["METEOR"] is None
    message = meteor_unavailable(None)
    assert message.startswith("METEOR absent (no METEOR 1.5 jar") and "\n" not in message
    assert "`pip install pycocoevalcap`" in message and "default-jre-headless" in message
    jar = tmp_path / "meteor-1.5.jar"
    jar.write_bytes(b"")
    no_java = meteor_unavailable(jar, java="no-such-java-binary-xyz")
    assert no_java.startswith("METEOR absent (no Java runtime ('no-such-java-binary-xyz' not on")
    assert "jar" not in no_java.split(";")[0]
    assert meteor_unavailable(jar, java=sys.executable) is None  # any executable stands in


def test_score_e2e_finds_installed_meteor():
    jar = find_meteor_jar()
    if jar is None or shutil.which("java") is None:
        pytest.skip(f"needs pycocoevalcap and Java: {meteor_unavailable(jar)}")
    assert meteor_unavailable(jar) is None
    score = score_e2e(BLEU_HYPS, BLEU_REFS, find_jar=True)["METEOR"]
    assert isinstance(score, float) and 0.0 < score < 100.0


# ------------------------------------------------------- cross-checks (optional packages) --


def _e2e_like_corpus(n: int, n_refs: int | None, seed: int = 0):
    rng = random.Random(seed)
    names = ["The Eagle", "Zizzi", "Café Rouge", "The Punter", "Loch Fyne", "Browns Cambridge"]
    foods = ["French", "Italian", "Japanese", "fast food", "English"]
    areas = ["city centre", "riverside"]
    prices = ["less than £20", "£20-25", "more than £30", "cheap", "high"]

    def sentence() -> str:
        nm, f, a, p = rng.choice(names), rng.choice(foods), rng.choice(areas), rng.choice(prices)
        return rng.choice(
            [
                f"{nm} is a {f} restaurant in the {a}. It's {p}.",
                f"Located in the {a}, {nm} serves {f} food at {p} prices.",
                f"{nm} isn't family-friendly; it's a {f} place (near the {a}), rated 5 out of 5!",
                f"There is a {p} {f} coffee shop called {nm}, it's in {a}.",
                f'In the {a} you\'ll find "{nm}", which offers {f} food - prices are {p}.',
            ]
        )

    hyps = [sentence() for _ in range(n)]
    refs = [[sentence() for _ in range(n_refs or rng.randint(1, 5))] for _ in range(n)]
    return hyps, refs


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs = _e2e_like_corpus(50, n_refs=3)
    streams = [list(r) for r in zip(*refs, strict=True)]
    expected = sacrebleu.corpus_bleu(hyps, streams, tokenize="13a", lowercase=True).score
    assert bleu(hyps, refs) == pytest.approx(expected, rel=1e-9)
    # sacrebleu's default "exp" smoothing is mteval-v13a's.
    streams = [list(r) for r in zip(*BLEU_REFS[:1], strict=True)]
    expected = sacrebleu.corpus_bleu(BLEU_HYPS[:1], streams, lowercase=True).score
    assert bleu(BLEU_HYPS[:1], BLEU_REFS[:1]) == pytest.approx(expected, rel=1e-9)


def test_nist_matches_nltk_single_reference():
    # With one reference per segment NLTK's corpus_nist reduces to mteval's formula.
    nist_score = pytest.importorskip("nltk.translate.nist_score")
    hyps, refs = _e2e_like_corpus(40, n_refs=1, seed=1)
    # Make the corpus short of its references so the penalty is active (with outputs of at
    # least 5 tokens: for shorter ones the E2E scorer's n-gram totals differ from NLTK's).
    hyps[0] = "Zizzi is a pub ."
    hyps[1] = "it is cheap food ."
    expected = nist_score.corpus_nist(
        [[mteval_tokenize(r) for r in rs] for rs in refs], [mteval_tokenize(h) for h in hyps]
    )
    assert nist(hyps, refs) == pytest.approx(expected, rel=1e-9)


def test_rouge_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    hyps, refs = _e2e_like_corpus(40, n_refs=None, seed=2)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    per_seg = [scorer.score_multi(r, h) for h, r in zip(hyps, refs, strict=True)]
    ours = rouge(hyps, refs)
    for key, theirs in [("ROUGE-1", "rouge1"), ("ROUGE-2", "rouge2"), ("ROUGE-L", "rougeL")]:
        expected = 100 * sum(s[theirs].fmeasure for s in per_seg) / len(per_seg)
        assert ours[key] == pytest.approx(expected, rel=1e-9)


def _coco_or_skip():
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("java not found: the COCO toolkit's tokenizer and METEOR need a Java runtime")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    hyps, refs = _e2e_like_corpus(40, n_refs=None, seed=3)
    hyps[0] = "Café Rouge's (cheap) food... isn't it? \"Zizzi\" isn't - £20-25, 1,000 etc."
    gts = {i: [{"caption": c} for c in rs] for i, rs in enumerate(refs)}
    res = {i: [{"caption": h}] for i, h in enumerate(hyps)}
    tokenizer = PTBTokenizer()
    return hyps, refs, tokenizer.tokenize(gts), tokenizer.tokenize(res)


def test_coco_metrics_match_coco_toolkit():
    from importlib import import_module

    hyps, refs, gts, res = _coco_or_skip()
    # Our tokenizer reproduces the Java PTB tokenizer + punctuation filter on this data ...
    assert [" ".join(coco_tokenize(h)) for h in hyps] == [res[i][0] for i in range(len(hyps))]
    for i, rs in enumerate(refs):
        assert [" ".join(coco_tokenize(r)) for r in rs] == gts[i]
    # ... and the scores equal the toolkit's (which prints ROUGE-L on 0-1).
    coco_cider = import_module("pycocoevalcap.cider.cider").Cider().compute_score(gts, res)[0]
    coco_rouge = import_module("pycocoevalcap.rouge.rouge").Rouge().compute_score(gts, res)[0]
    assert cider(hyps, refs) == pytest.approx(coco_cider, rel=1e-9)
    assert rouge_l(hyps, refs) == pytest.approx(100 * coco_rouge, rel=1e-9)


def test_meteor_matches_coco_toolkit():
    hyps, refs, gts, res = _coco_or_skip()
    import pycocoevalcap.meteor.meteor as coco_meteor

    jar = Path(coco_meteor.__file__).parent / "meteor-1.5.jar"
    expected = coco_meteor.Meteor().compute_score(gts, res)[0]
    assert meteor(hyps, refs, jar) == pytest.approx(100 * expected, abs=1e-6)
