"""`optiml sweep --status DIR` from the files a sweep writes: done runs with their scores, a run
that failed, one under way, the pending ones and an estimate of the time left."""

import json

from optiml_engine.cli import main


def test_status_reads_plan_events_and_done_markers(tmp_path, capsys):
    runs = [{"name": f"v{i}-s1", "variant": f"v{i}", "seed": 1, "overrides": [f"x={i}"],
             "value": None} for i in range(4)]
    (tmp_path / "plan.json").write_text(json.dumps({"sweep": "st", "runs": runs}))
    events = [{"time": 0.0, "event": "train_start", "run": "v0-s1"},
              {"time": 40.0, "event": "eval_start", "run": "v0-s1"},
              {"time": 60.0, "event": "done", "run": "v0-s1"},
              {"time": 60.0, "event": "train_start", "run": "v1-s1"},
              {"time": 61.0, "event": "failed", "run": "v1-s1", "why": "train exited 2"},
              {"time": 61.0, "event": "train_start", "run": "v2-s1"}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events)
                                           + '{"time": 62.0, "ev')  # a line cut by a kill
    done = tmp_path / "runs" / "v0-s1"
    done.mkdir(parents=True)
    (done / "DONE.json").write_text(json.dumps({"scores": {"selection": {
        "heldout_category": 10.0, "heldout_task": 20.0, "overall": 15.0}}}))
    assert main(["sweep", "--status", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # one run of 60 s finished; 2 left (one running, one pending) -> 2 min
    assert lines[0] == ("sweep st: 1/4 done, 1 running, 1 failed, 1 pending, about 2.0 min of "
                        "runs left")
    assert lines[1].split() == ["done", "v0-s1", "cat", "10.0", "|", "task", "20.0", "|",
                                "selection", "15.0"]
    assert lines[2].split()[:3] == ["failed", "v1-s1", "train"]
    assert lines[3].split() == ["running", "v2-s1", "train"]
    assert lines[4].split() == ["pending", "v3-s1", "x=3"]


def test_status_of_a_directory_that_is_no_sweep(tmp_path, capsys):
    assert main(["sweep", "--status", str(tmp_path)]) == 2
    assert "no plan.json: not a sweep directory" in capsys.readouterr().err
