"""The report's answers to a sweep's questions (prefix_jax.study.report.contrasts): paired BLEU
differences checked against corpus BLEU scored from the strings."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from prefix_jax.metrics import bleu
from prefix_jax.metrics.bleu import bleu_segment_stats
from prefix_jax.study import bootstrap, launch
from prefix_jax.study.report import contrasts, write_report
from prefix_jax.study.sweep import Contrast, Sweep, load_sweep, trial_name

WORDS = "the a cheap pub near river food rating family friendly coffee shop city centre".split()


def _corpus(n: int, noise: float, seed: int) -> tuple[list[str], list[str], list[list[str]]]:
    """n sources, fixed references, and hypotheses that copy a reference with a share
    `noise` of their words replaced (drawn with `seed`)."""
    fixed, noisy = random.Random(0), random.Random(f"{seed}-{noise}")
    sources, hyps, refs = [], [], []
    for i in range(n):
        base = [fixed.choice(WORDS) for _ in range(fixed.randint(6, 12))]
        refs.append([" ".join(base), " ".join(reversed(base))])
        hyps.append(" ".join(w if noisy.random() > noise else noisy.choice(WORDS) for w in base))
        sources.append(f"name[S{i}]")
    return sources, hyps, refs


def _trial(setting: dict, seed: int, noise: float, n: int = 60, order=None) -> dict:
    sources, hyps, refs = _corpus(n, noise, seed)
    if order is not None:  # the same outputs, listed in another order of sources
        sources, hyps, refs = ([x[i] for i in order] for x in (sources, hyps, refs))
    stats = np.asarray(bleu_segment_stats(hyps, refs), dtype=np.float64)
    return {
        "status": "finished",
        "overrides": {**setting, "seed": seed},
        "metrics": {"BLEU": bleu(hyps, refs)},
        "bleu_stats": (sources, stats),
        "strings": (hyps, refs),
    }


def _group(setting: dict, noise: float, seeds=(0, 1, 2), **kw) -> dict:
    return {"setting": setting, "trials": [_trial(setting, s, noise, **kw) for s in seeds]}


def _contrast(a: dict, b: dict, within=()) -> dict:
    return Contrast("Is a ahead?", a, b, tuple(within)).as_json()


def _answer(groups, a, b, within=(), samples=400) -> list[dict]:
    return contrasts.answer_contrast(groups, _contrast(a, b, within), ("seed",), samples)


def test_a_clearly_better_setting_is_a_yes_with_differences_scored_from_strings():
    good, bad = {"method": "prefix"}, {"method": "full"}
    groups = [_group(good, noise=0.1), _group(bad, noise=0.5)]
    (row,) = _answer(groups, good, bad)
    per_seed = {
        side: [bleu(*t["strings"]) for t in g["trials"]]
        for side, g in zip("ab", groups, strict=True)
    }
    assert row["diff"] == pytest.approx(np.mean(per_seed["a"]) - np.mean(per_seed["b"]))
    expected = {s: per_seed["a"][s] - per_seed["b"][s] for s in range(3)}
    assert row["seed_diffs"] == pytest.approx(expected)
    assert row["a_ahead"] == 3 and 0 < row["low"] < row["diff"] < row["high"]
    assert row["answer"] == contrasts.YES and row["note"] == ""
    # Swapped: the same resamples, so the interval is exactly mirrored.
    (swapped,) = _answer(groups, bad, good)
    assert swapped["diff"] == pytest.approx(-row["diff"])
    assert (swapped["low"], swapped["high"]) == pytest.approx((-row["high"], -row["low"]))
    assert swapped["answer"] == contrasts.NO and swapped["a_ahead"] == 0


def test_the_interval_equals_a_brute_force_paired_bootstrap():
    a, b = {"method": "prefix"}, {"method": "lora"}
    groups = [_group(a, 0.2, seeds=(0, 1), n=9), _group(b, 0.35, seeds=(0, 1), n=9)]
    (row,) = _answer(groups, a, b, samples=150)
    counts = bootstrap.resample_counts(9, 150, np.random.default_rng(bootstrap.SEED))

    def mean_bleu(group, picked):
        runs = [t["strings"] for t in group["trials"]]
        return np.mean([bleu([h[i] for i in picked], [r[i] for i in picked]) for h, r in runs])

    diffs = []
    for drawn in counts:  # rebuild each resampled corpus of every run and score the strings
        picked = [i for i in range(9) for _ in range(drawn[i])]
        diffs.append(mean_bleu(groups[0], picked) - mean_bleu(groups[1], picked))
    assert (row["low"], row["high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))


def test_identical_outputs_are_not_resolved_and_sources_are_matched_by_name():
    a, b = {"method": "prefix"}, {"method": "prompt"}
    shuffled = list(np.random.default_rng(1).permutation(60))
    groups = [_group(a, 0.3), _group(b, 0.3, order=shuffled)]
    (row,) = _answer(groups, a, b)
    assert row["diff"] == pytest.approx(0, abs=1e-9)
    assert (row["low"], row["high"]) == pytest.approx((0, 0), abs=1e-9)
    assert row["answer"] == contrasts.UNRESOLVED


def test_seed_spread_keeps_a_clear_test_set_gap_unresolved():
    # a is ahead on seeds 0 and 1 but behind on seed 2: no "yes" whatever the interval.
    a, b = {"method": "prefix"}, {"method": "full"}
    group_a = {"setting": a, "trials": [_trial(a, 0, 0.05), _trial(a, 1, 0.05), _trial(a, 2, 0.6)]}
    group_b = {"setting": b, "trials": [_trial(b, s, 0.3) for s in range(3)]}
    (row,) = _answer([group_a, group_b], a, b)
    assert row["a_ahead"] == 2 and row["answer"] == contrasts.UNRESOLVED


def test_within_pairs_each_value_and_averages_over_values():
    groups, noise = [], {("prefix", 50): 0.2, ("full", 50): 0.4}
    noise |= {("prefix", 200): 0.15, ("full", 200): 0.1}
    for (method, size), level in noise.items():
        groups.append(_group({"method": method, "data.train_examples": size}, level))
    rows = _answer(groups, {"method": "prefix"}, {"method": "full"}, ("data.train_examples",))
    assert [r["within"] for r in rows] == [
        "data.train_examples=50",
        "data.train_examples=200",
        "mean over data.train_examples",
    ]
    assert rows[0]["answer"] == contrasts.YES and rows[1]["answer"] == contrasts.NO
    assert rows[2]["diff"] == pytest.approx((rows[0]["diff"] + rows[1]["diff"]) / 2)
    for s in range(3):
        mean = (rows[0]["seed_diffs"][s] + rows[1]["seed_diffs"][s]) / 2
        assert rows[2]["seed_diffs"][s] == pytest.approx(mean)
    assert rows[2]["low"] < rows[2]["diff"] < rows[2]["high"]


def test_seeds_pair_by_value_not_by_position():
    a, b = {"method": "prefix"}, {"method": "full"}
    group_a = _group(a, 0.2, seeds=(2, 0))
    group_b = _group(b, 0.4, seeds=(0, 1, 2))  # seed 1 of b has no partner
    (row,) = _answer([group_a, group_b], a, b)
    assert set(row["seed_diffs"]) == {0, 2}
    bleus_a = {t["overrides"]["seed"]: t["metrics"]["BLEU"] for t in group_a["trials"]}
    bleus_b = {t["overrides"]["seed"]: t["metrics"]["BLEU"] for t in group_b["trials"]}
    assert row["seed_diffs"][2] == pytest.approx(bleus_a[2] - bleus_b[2])
    # b's unpartnered seed 1 stays out of the mean too: both means are over seeds 0 and 2.
    mean_a, mean_b = (np.mean([bleus[0], bleus[2]]) for bleus in (bleus_a, bleus_b))
    assert row["diff"] == pytest.approx(mean_a - mean_b)
    assert row["note"] == "seeds not evaluated for every compared setting left out: 1"


def test_a_seed_part_way_through_is_left_out_of_every_row():
    # Seed 1 finished at 50 examples only: the 50-example row, the 500-example row and their
    # mean all compare seed 0 alone, so the mean row pairs like with like.
    groups = []
    for method, noise in (("prefix", 0.2), ("full", 0.4)):
        groups.append(_group({"method": method, "data.train_examples": 50}, noise, seeds=(0, 1)))
        groups.append(_group({"method": method, "data.train_examples": 500}, noise, seeds=(0,)))
    rows = _answer(groups, {"method": "prefix"}, {"method": "full"}, ("data.train_examples",))
    assert [set(r["seed_diffs"]) for r in rows] == [{0}, {0}, {0}]
    seed0 = [g["trials"][0]["metrics"]["BLEU"] for g in groups]
    assert rows[0]["diff"] == pytest.approx(seed0[0] - seed0[2])
    assert all(r["note"].endswith("left out: 1") for r in rows)
    disjoint = [_group({"method": "prefix"}, 0.2, (0,)), _group({"method": "full"}, 0.4, (1,))]
    (row,) = _answer(disjoint, {"method": "prefix"}, {"method": "full"})
    assert row["diff"] is None and row["note"] == "no seed was evaluated for every compared setting"


def test_contrasts_that_cannot_be_answered_say_why():
    a, b = {"method": "prefix", "prefix.length": 1}, {"method": "prefix", "prefix.length": 5}
    groups = [_group(a, 0.2), _group({"method": "prefix", "prefix.length": 10}, 0.2)]
    missing = _answer(groups, a, b)[0]["note"]
    assert "b = method=prefix,prefix.length=5 matches no setting" in missing
    loose = _answer(groups, {"method": "prefix"}, a)[0]
    assert "matches more than one setting" in loose["note"] and loose["diff"] is None
    other_sources = _group(b, 0.2, n=30)
    (row,) = _answer([groups[0], other_sources], a, b)
    assert row["note"] == "the settings were scored on different sources"
    unevaluated = _group(b, 0.2)
    for t in unevaluated["trials"]:
        t["bleu_stats"] = None
    assert "no evaluated trials" in _answer([groups[0], unevaluated], a, b)[0]["note"]


def test_contrasts_are_checked_when_the_sweep_is_built():
    grid = [{"method": "prefix"}, {"method": "full"}]
    with pytest.raises(ValueError, match="distinct"):
        Contrast("q", {"method": "prefix"}, {"method": "prefix"})
    with pytest.raises(ValueError, match="both paired on and fixed"):
        Contrast("q", {"method": "prefix", "n": 1}, {"method": "full"}, within=("n",))
    with pytest.raises(ValueError, match="prefix.length.*which no grid point sets"):
        Sweep("s", "c.py", grid, contrasts=(Contrast("q", {"prefix.length": 1}, {"method": "x"}),))


def test_a_dict_sweep_file_declares_contrasts(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "def get_sweep():\n"
        "    return {'name': 'mine', 'config': 'c.py',\n"
        "            'grid': [{'method': 'prefix'}, {'method': 'full'}],\n"
        "            'contrasts': [{'question': 'q?', 'a': {'method': 'prefix'},\n"
        "                           'b': {'method': 'full'}}]}\n"
    )
    (contrast,) = load_sweep(str(path)).contrasts
    assert contrast == Contrast("q?", {"method": "prefix"}, {"method": "full"})


def _write_trial(root, setting: dict, seed: int, noise: float) -> None:
    overrides = {**setting, "seed": seed}
    tdir = root / trial_name(overrides)
    (tdir / "eval_validation").mkdir(parents=True)
    (tdir / "trial.json").write_text(json.dumps({"overrides": overrides}))
    (tdir / "train_summary.json").write_text(json.dumps({"eval_loss": 1.0}))
    sources, hyps, refs = _corpus(40, noise, seed)
    with open(tdir / "eval_validation" / "predictions.jsonl", "w") as f:
        for s, h, r in zip(sources, hyps, refs, strict=True):
            f.write(json.dumps({"source": s, "prediction": h, "references": r}) + "\n")
    results = {"metrics": {"BLEU": bleu(hyps, refs)}}
    (tdir / "eval_validation" / "results.json").write_text(json.dumps(results))


def test_report_answers_the_questions_the_launcher_recorded(tmp_path):
    root = tmp_path / "study"
    grid = [{"method": m, "data.train_examples": n} for m in ("prefix", "full") for n in (50, 200)]
    question = Contrast(
        "Is prefix ahead of full?",
        {"method": "prefix"},
        {"method": "full"},
        within=("data.train_examples",),
    )
    study = Sweep("study", "c.py", grid, seeds=(0, 1), seed_keys=("seed",), contrasts=(question,))
    launch.write_sweep_json(root, study, [], {})
    assert json.loads((root / "sweep.json").read_text())["contrasts"] == [question.as_json()]
    for point in grid:
        for seed in (0, 1):
            _write_trial(root, point, seed, 0.1 if point["method"] == "prefix" else 0.5)
    written = write_report(root, bootstrap=200)
    with open(written["contrasts_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["within"] for r in rows] == [
        "data.train_examples=50",
        "data.train_examples=200",
        "mean over data.train_examples",
    ]
    assert all(r["answer"] == "yes" and float(r["ci_low"]) > 0 for r in rows)
    md = (root / "report.md").read_text()
    assert "## Questions: is a ahead of b?" in md and "| Is prefix ahead of full? |" in md
    assert "2/2 (+" in md


@pytest.mark.parametrize("name", ["low_data", "prefix_length"])
def test_every_study_question_pairs_settings_of_its_own_grid(name):
    study = load_sweep(name)
    groups = {}
    for trial in study.trials():
        setting = {k: v for k, v in trial.overrides.items() if k not in study.seed_keys}
        key = json.dumps(setting, sort_keys=True)
        groups.setdefault(key, {"setting": setting, "trials": []})
    settings = list(groups.values())
    axes = {k for g in settings for k in g["setting"]}
    for g in settings:  # as the report groups them: every axis present, None where unset
        g["setting"] = {k: g["setting"].get(k) for k in axes}
    for contrast in study.contrasts:
        pairs = contrasts.pair_groups(settings, contrast.as_json())
        assert len(pairs) == (3 if contrast.within else 1), contrast.question
        for _, group_a, group_b in pairs:
            assert group_a is not group_b
