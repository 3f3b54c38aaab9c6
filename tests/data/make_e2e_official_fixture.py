"""Build ``e2e_official_fixture.json`` and score it with the official E2E challenge scorer.

The fixture is what ``tests/test_metrics.py::test_e2e_metrics_equal_official_scorer`` scores:
300 segments cut from the E2E NLG Challenge development set. For each MR (in file order,
MRs with at least two references), one human reference becomes the "system output", degraded
deterministically for four segments in five (truncated, a sentence dropped, recased and
unpunctuated, or given another MR's venue name), and 1 to 6 of the MR's other references are
kept as its references (the count cycles with the segment index, so segments have different
numbers of references, which is where the NIST length penalty of the official scorer and of
mteval-v13a part ways). Every output keeps at least five tokens.

Build (needs the devset; the JSON is committed, so tests never do):

    python tests/data/make_e2e_official_fixture.py build ../shared/data/e2e/devset.csv

Score with the official scorer (github.com/tuetschek/e2e-metrics: BLEU and NIST from its
``metrics/pymteval.py``, ROUGE-L and CIDEr from the COCO caption code it runs, with the Java
PTB tokenizer); this only calls that code, it contains none of it:

    PYTHONPATH=/path/to/e2e-metrics:/path/to/pycocoevalcap-parent \\
        python tests/data/make_e2e_official_fixture.py score tests/data/e2e_official_fixture.json
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

N_SEGMENTS = 300
SOURCE = (
    "Derived from the E2E NLG Challenge development set (devset.csv of "
    "github.com/tuetschek/e2e-dataset; Novikova, Dusek and Rieser, SIGDIAL 2017), licensed "
    "CC BY-SA 4.0; this excerpt, with its deterministically degraded outputs, is distributed "
    "under the same licence. Built by tests/data/make_e2e_official_fixture.py."
)


def _degrade(text: str, kind: int, rng: random.Random, other_name: str, name: str) -> str:
    words = text.split()
    if kind == 1:  # truncated output: keep 50-80% of the words
        keep = max(6, round(len(words) * rng.uniform(0.5, 0.8)))
        return " ".join(words[:keep])
    if kind == 2:  # one sentence (or, for single sentences, a word span) missing
        sentences = [s for s in text.replace(". ", ".\n").split("\n") if s]
        if len(sentences) > 1:
            del sentences[rng.randrange(len(sentences))]
            if len(" ".join(sentences).split()) >= 6:
                return " ".join(sentences)
        start = rng.randrange(1, max(2, len(words) - 3))
        return " ".join(words[:start] + words[start + 3 :])
    if kind == 3:  # recased, without punctuation, two neighbouring words swapped
        words = [w.strip(".,;:!") for w in text.lower().split()]
        words = [w for w in words if w]
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if kind == 4:  # wrong venue name
        return text.replace(name, other_name) if name in text else f"{other_name} - {text}"
    return text


def build(devset: Path, out: Path) -> None:
    by_mr: dict[str, list[str]] = {}
    with devset.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_mr.setdefault(row["mr"], []).append(row["ref"])
    mrs = [mr for mr, refs in by_mr.items() if len(refs) >= 2][:N_SEGMENTS]
    names = [mr.split("name[", 1)[1].split("]", 1)[0] for mr in mrs]
    rng = random.Random(16)
    segments = []
    for i, mr in enumerate(mrs):
        refs = by_mr[mr]
        other = next(n for n in names[i + 1 :] + names if n != names[i])
        hyp = _degrade(refs[0], i % 5, rng, other, names[i])
        assert len(hyp.split()) >= 5, hyp
        segments.append({"mr": mr, "hyp": hyp, "refs": refs[1 : 2 + i % 6]})
    data = {"source": SOURCE, "segments": segments}
    out.write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def score(fixture: Path) -> dict[str, float]:
    from metrics.pymteval import BLEUScore, NISTScore  # e2e-metrics
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    segments = json.loads(fixture.read_text(encoding="utf-8"))["segments"]
    bleu, nist = BLEUScore(), NISTScore()
    for seg in segments:  # as measure_scores.py's run_pymteval
        bleu.append(seg["hyp"], seg["refs"])
        nist.append(seg["hyp"], seg["refs"])
    # as measure_scores.py's run_coco_eval -> COCOEvalCap.evaluate: PTB-tokenize, then score
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize(
        {f"inst-{i}": [{"caption": r} for r in seg["refs"]] for i, seg in enumerate(segments)}
    )
    res = tokenizer.tokenize(
        {f"inst-{i}": [{"caption": seg["hyp"]}] for i, seg in enumerate(segments)}
    )
    return {
        "BLEU": bleu.score(),
        "NIST": nist.score(),
        "ROUGE_L": Rouge().compute_score(gts, res)[0],
        "CIDEr": Cider().compute_score(gts, res)[0],
    }


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]), Path(__file__).with_name("e2e_official_fixture.json"))
    else:
        print(json.dumps(score(Path(sys.argv[2])), indent=1))
