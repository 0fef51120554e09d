"""The sweep report's numbers against hand computations: means, sample stds and per-seed deltas
from a fixed results.json fixture, and the §4.1 model-selection score from instance records."""

import json
import math
from pathlib import Path

import pytest

from optiml_engine.sweep.report import aggregate, best_per_level, render
from optiml_engine.sweep.scores import run_scores

FIXTURE = Path(__file__).parent / "fixtures" / "sweep_results.json"


def test_means_stds_and_deltas_equal_a_hand_computation():
    results = json.loads(FIXTURE.read_text())
    agg = aggregate(results)
    b = agg["B"]
    # selection of B over seeds 1, 2, 3: 14, 22, 36 -> mean 24, sample var (100 + 4 + 144) / 2
    assert b["selection"]["overall"]["mean"] == pytest.approx(24.0)
    assert b["selection"]["overall"]["std"] == pytest.approx(math.sqrt(124.0))
    # per-seed deltas to A (10, 20, 30): 4, 2, 6 -> mean 4, sample std sqrt((0 + 4 + 4) / 2) = 2
    assert b["delta"]["overall"]["mean"] == pytest.approx(4.0)
    assert b["delta"]["overall"]["std"] == pytest.approx(2.0)
    assert agg["A"]["delta"]["overall"] == {"mean": 0.0, "std": 0.0, "n": 3}
    # level 0-shot of A: 10, 12, 14 -> 12 +- 2; 5-shot: 20, 22, 30 -> 24 +- sqrt((16+4+36)/2)
    assert agg["A"]["level"]["heldout_category"]["0"]["mean"] == pytest.approx(12.0)
    assert agg["A"]["level"]["heldout_category"]["0"]["std"] == pytest.approx(2.0)
    assert agg["A"]["level"]["heldout_category"]["5"]["std"] == pytest.approx(math.sqrt(28.0))
    # category of B, 0-shot: 6, 6, 12 -> mean 8, std sqrt((4 + 4 + 16) / 2)
    cat = b["category"]["heldout_category"]["Word Analogy"]["0"]
    assert (cat["mean"], cat["std"]) == pytest.approx((8.0, math.sqrt(12.0)))
    assert best_per_level(agg) == {"heldout_category": ["B"], "overall": ["B"]}
    results["runs"] = [r for r in results["runs"] if r["variant"] == "A"] + [
        {**r, "variant": "B"} for r in results["runs"] if r["variant"] == "A"]
    assert best_per_level(aggregate(results))["overall"] == ["A", "B"]  # a tie: both

    results = json.loads(FIXTURE.read_text())
    text = render(results, agg)
    assert "Best variant per level: held-out categories: **B**; overall: **B**" in text
    assert "| B | 24.0 ± 11.1 | 24.0 ± 11.1 | +4.0 ± 2.0 | +4.0 ± 2.0 |" in text
    assert "| A (baseline) | 12.0 ± 2.0 | 24.0 ± 5.3 |" in text
    assert "| B-s3 | 13.0 s | 3000 | 300 tok/s | 5 | 1.0000 |" in text


def test_one_seed_has_no_std():
    results = json.loads(FIXTURE.read_text())
    results["runs"] = [r for r in results["runs"] if r["seed"] == 1]
    agg = aggregate(results)
    assert agg["B"]["selection"]["overall"] == {"mean": 14.0, "std": None, "n": 1}
    assert "| B | 14.0 | 14.0 | +4.0 | +4.0 |" in render(results, agg)


def rec(level, category, task, shots, score, benchmark="superni"):
    return {"level": level, "category": category, "task": task, "shots": shots,
            "benchmark": benchmark, "scores": {"score": score}}


def test_selection_score_follows_the_paper():
    """§4.1: task means (merged across benchmarks), category means of task means, the mean over
    0/5 shots of the category mean, Summarization 0-shot only; overall: mean of levels."""
    records = [
        # level 1, category X: task a (two instances), task b; category Summarization: task s
        rec("heldout_category", "X", "a", 0, 10.0), rec("heldout_category", "X", "a", 0, 30.0),
        rec("heldout_category", "X", "b", 0, 40.0),
        rec("heldout_category", "X", "a", 5, 50.0), rec("heldout_category", "X", "b", 5, 70.0),
        rec("heldout_category", "Summarization", "s", 0, 80.0),
        rec("heldout_category", "Summarization", "s", 5, 0.0),  # not counted: 0-shot only
        # level 3: task m in two benchmarks (instances 10, 20 in one; 60 in the other)
        rec("heldout_instance", "Y", "m", 0, 10.0, "flan"),
        rec("heldout_instance", "Y", "m", 0, 20.0, "flan"),
        rec("heldout_instance", "Y", "m", 0, 60.0, "superni"),
    ]
    s = run_scores(records)
    # X 0-shot: a = 20, b = 40 -> 30; X 5-shot: 60; Summarization 0-shot 80
    assert s["category"]["heldout_category"]["X"] == {"0": 30.0, "5": 60.0}
    # 0-shot: mean(30, 80) = 55; 5-shot: X only = 60 -> selection 57.5
    assert s["selection"]["heldout_category"] == pytest.approx(57.5)
    # m: mean(mean(10, 20), 60) = 37.5, not the instance mean 30
    assert s["level"]["heldout_instance"] == {"0": 37.5}
    assert s["selection"]["heldout_instance"] == pytest.approx(37.5)
    assert s["selection"]["overall"] == pytest.approx((57.5 + 37.5) / 2)
    # the level score: mean of task means, a = 20, b = 40, s = 80 at 0 shots
    assert s["level"]["heldout_category"]["0"] == pytest.approx(140 / 3)
