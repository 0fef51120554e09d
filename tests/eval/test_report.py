"""results.json, report.md and the PNG charts from a handful of hand-made records."""

import json

from optiml_engine.eval.report import load_history, side_by_side, write_report


def _records():
    def rec(task, category, level, shots, score, kind="generate"):
        return {"task": task, "category": category, "benchmark": "superni", "level": level,
                "shots": shots, "id": f"{task}-{score}", "kind": kind, "prediction": "p",
                "references": ["r"], "scores": {"score": score, "rougeL": score}}

    return [rec("t1", "qa", "heldout_task", 0, 40.0), rec("t1", "qa", "heldout_task", 0, 60.0),
            rec("t2", "cls", "heldout_category", 0, 10.0),
            rec("t2", "cls", "heldout_category", 5, 30.0),
            rec("t1", "qa", "heldout_task", 5, 70.0)]


def test_report_files_and_tables(tmp_path):
    history = [{"step": 10, "eval/heldout_task/0shot": 5.0},
               {"step": 20, "eval/heldout_task/0shot": 9.0}]
    summary = write_report(tmp_path, _records(), {"checkpoint": "ckpt", "shots": [0, 5]}, history)
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["instances"]) == 5
    assert data["instances"][0]["prediction"] == "p" and data["instances"][0]["references"] == ["r"]
    assert data["summary"]["0"]["level"]["heldout_task"]["score"] == 50.0
    assert summary[5]["level"]["heldout_category"]["score"] == 30.0

    md = (tmp_path / "report.md").read_text()
    # levels in the paper's order, one column per shot count
    assert "| level | 0-shot score | 5-shot score |" in md
    assert "| 1. held-out categories | 10.0 | 30.0 |" in md
    assert "| 2. held-out tasks of seen categories | 50.0 | 70.0 |" in md
    assert md.index("1. held-out categories") < md.index("2. held-out tasks")
    assert "| qa | 50.0 | 70.0 |" in md  # per-category rows
    for png in ("levels.png", "training_evals.png"):
        blob = (tmp_path / png).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000
        assert f"({png})" in md


def test_side_by_side_and_history(tmp_path):
    from optiml_engine.eval.aggregate import aggregate

    after = aggregate(_records())
    before = aggregate([dict(r, scores={"score": 0.0}) for r in _records()])
    table = side_by_side({"untrained": before, "trained": after})
    assert table.splitlines()[0] == ("| level | untrained 0-shot | untrained 5-shot |"
                                     " trained 0-shot | trained 5-shot |")
    assert "| 2. held-out tasks of seen categories | 0.0 | 0.0 | 50.0 | 70.0 |" in table
    path = tmp_path / "h.jsonl"
    path.write_text('{"step": 1, "a": 2.0}\n\n{"step": 2, "a": 3.0}\n')
    assert load_history(path) == [{"step": 1, "a": 2.0}, {"step": 2, "a": 3.0}]
    assert load_history(tmp_path / "missing.jsonl") == []


def test_report_has_the_papers_table_shape(tmp_path):
    """Rows: benchmarks within each level, with task counts, then the level; columns: 0-shot,
    5-shot, then the 0/5 average (hand-computed below)."""
    def rec(task, benchmark, category, level, shots, score):
        return {"task": task, "category": category, "benchmark": benchmark, "level": level,
                "shots": shots, "id": f"{task}-{shots}", "kind": "generate", "prediction": "p",
                "references": ["r"], "scores": {"score": score}}

    records = [rec("t1", "superni", "Coref", "heldout_category", 0, 40.0),
               rec("t1", "superni", "Coref", "heldout_category", 5, 60.0),
               rec("ps1", "promptsource", "Coref", "heldout_category", 0, 20.0),
               rec("ps1", "promptsource", "Coref", "heldout_category", 5, 30.0),
               rec("t2", "superni", "Summarization", "heldout_task", 0, 10.0)]
    write_report(tmp_path, records, {"shots": [0, 5]})
    md = (tmp_path / "report.md").read_text()
    table = md.split("## Benchmarks x levels\n\n")[1].split("\n\n")[0].splitlines()
    assert table == [
        "| level | benchmark | tasks | 0-shot | 5-shot | 0/5-shot avg |",
        "|---|---|---|---|---|---|",
        "| 1. held-out categories | promptsource | 1 | 20.0 | 30.0 | 25.0 |",
        "| 1. held-out categories | superni | 1 | 40.0 | 60.0 | 50.0 |",
        "| 1. held-out categories | **all** | 2 | 30.0 | 45.0 | 37.5 |",
        "| 2. held-out tasks of seen categories | superni | 1 | 10.0 | - | 10.0 |",
        "| 2. held-out tasks of seen categories | **all** | 1 | 10.0 | - | 10.0 |"]
    assert "| 1. held-out categories | Coref | 30.0 | 45.0 |" in md
