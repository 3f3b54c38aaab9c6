"""METEOR 1.5 through its official Java jar (there is no faithful pure-Python port).

Denkowski & Lavie, 2014, "Meteor Universal: Language Specific Translation Evaluation for Any
Target Language". The jar (with its ``data/`` paraphrase tables beside it) is not bundled:
``find_meteor_jar`` finds the copy the ``pycocoevalcap`` wheel ships (``pip install
pycocoevalcap``); Java comes from the system. Without jar or Java the score is reported as
missing (None), never as a number, and ``meteor_unavailable`` says how to get them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from .bleu import check_inputs
from .rouge import coco_tokenize

__all__ = ["find_meteor_jar", "meteor", "meteor_unavailable"]

_FINAL_SCORE = re.compile(r"Final score:\s*([0-9.eE+-]+)")

# Where the pycocoevalcap wheel keeps the jar and the English paraphrase table it reads.
_PACKAGE = "pycocoevalcap"
_JAR = Path("meteor", "meteor-1.5.jar")
_PARAPHRASES = Path("meteor", "data", "paraphrase-en.gz")

HOW_TO_GET = (
    "`pip install pycocoevalcap` (it ships the METEOR 1.5 jar) and a Java runtime "
    "(e.g. `apt-get install default-jre-headless`), or set meteor_jar"
)


def find_meteor_jar() -> Path | None:
    """The METEOR 1.5 jar of an installed ``pycocoevalcap`` package, or None.

    Located with ``importlib.util.find_spec`` (the package is not imported) and accepted only
    with its English paraphrase table beside it, without which ``-l en`` cannot run.
    """
    try:
        spec = find_spec(_PACKAGE)
    except (ImportError, ValueError):  # e.g. a broken half-installed package
        return None
    if spec is None or spec.submodule_search_locations is None:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location)
        if (root / _JAR).is_file() and (root / _PARAPHRASES).is_file():
            return root / _JAR
    return None


def meteor_unavailable(jar: str | Path | None, java: str = "java") -> str | None:
    """None when ``meteor`` can run with ``jar`` and ``java``; else one line saying what is
    missing and how to get it."""
    missing = []
    if jar is None:
        missing.append("no METEOR 1.5 jar")
    if shutil.which(java) is None:
        missing.append(f"no Java runtime ({java!r} not on PATH)")
    if not missing:
        return None
    return f"METEOR absent ({', '.join(missing)}); to score it: {HOW_TO_GET}."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def meteor(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    jar: str | Path | None,
    *,
    tokenize: bool = True,
    java: str = "java",
    max_memory: str = "2G",
    timeout: float = 1800.0,
) -> float | None:
    """Corpus METEOR 1.5 (``-l en -norm``) on a 0-100 scale, or None without jar or Java.

    Runs the jar in plain-text file mode (``hyp ref -r N``, references interleaved) and parses
    its "Final score" (statistics aggregated over the corpus, the same number the COCO
    toolkit's stdio mode returns). Segments with fewer than N references are padded by
    repeating their last reference: METEOR keeps the best-matching reference, so duplicates do
    not change the score. With ``tokenize=True`` text first goes through ``coco_tokenize`` as
    the E2E scripts (via the COCO toolkit) do.

    Raises FileNotFoundError if ``jar`` is given but missing, RuntimeError if Java fails.
    """
    check_inputs(hypotheses, references)
    if jar is None:
        return None
    jar_path = Path(jar).expanduser().resolve()
    if not jar_path.is_file():
        raise FileNotFoundError(f"METEOR jar not found: {jar_path}")
    java_bin = shutil.which(java)
    if java_bin is None:
        return None

    def prep(text: str) -> str:
        return " ".join(coco_tokenize(text)) if tokenize else _one_line(text)

    n_refs = max(len(refs) for refs in references)
    with tempfile.TemporaryDirectory(prefix="meteor-") as tmp:
        hyp_file, ref_file = Path(tmp, "hyp.txt"), Path(tmp, "ref.txt")
        hyp_file.write_text("".join(prep(h) + "\n" for h in hypotheses), encoding="utf-8")
        lines = []
        for refs in references:
            padded = list(refs) + [refs[-1]] * (n_refs - len(refs))
            lines.extend(prep(r) + "\n" for r in padded)
        ref_file.write_text("".join(lines), encoding="utf-8")
        cmd = [
            java_bin,
            f"-Xmx{max_memory}",
            "-jar",
            str(jar_path),
            str(hyp_file),
            str(ref_file),
            "-l",
            "en",
            "-norm",
            "-r",
            str(n_refs),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=jar_path.parent
        )
    match = _FINAL_SCORE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"METEOR failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return 100.0 * float(match.group(1))
