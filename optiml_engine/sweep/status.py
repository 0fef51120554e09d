"""`optiml sweep --status DIR`: where a sweep (running here or elsewhere) stands, from the files
it writes: plan.json, events.jsonl and the runs' DONE.json."""

from __future__ import annotations

import json
from pathlib import Path

from optiml_engine.errors import OptimlError
from optiml_engine.sweep.plan import DONE
from optiml_engine.sweep.report import short_scores


def _events(out: Path) -> list[dict]:
    path = out / "events.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the runs' own files decide
            continue
    return events


def sweep_status(out: str | Path) -> str:
    out = Path(out)
    if not (out / "plan.json").is_file():
        raise OptimlError(f"--status {out}", "no plan.json: not a sweep directory",
                          "pass the --out directory of `optiml sweep`")
    plan = json.loads((out / "plan.json").read_text())
    events = _events(out)
    last = {e["run"]: e for e in events}
    started = {}
    durations = []
    for e in events:
        if e["event"] == "train_start" or (e["event"] == "eval_start" and e["run"] not in started):
            started[e["run"]] = e["time"]
        elif e["event"] == "done" and e["run"] in started:
            durations.append(e["time"] - started.pop(e["run"]))
    lines, counts = [], {"done": 0, "running": 0, "failed": 0, "pending": 0}
    for run in plan["runs"]:
        done = out / "runs" / run["name"] / DONE
        if done.is_file():
            state, detail = "done", short_scores(json.loads(done.read_text())["scores"])
        elif run["name"] in last and last[run["name"]]["event"] == "failed":
            state, detail = "failed", last[run["name"]].get("why", "")
        elif run["name"] in last:
            state, detail = "running", last[run["name"]]["event"].replace("_start", "")
        else:
            state, detail = "pending", " ".join(run["overrides"])
        counts[state] += 1
        lines.append(f"  {state:<8} {run['name']:<28} {detail}")
    left = counts["pending"] + counts["running"]
    eta = (f", about {sum(durations) / len(durations) * left / 60:.1f} min of runs left"
           if durations and left else "")
    head = (f"sweep {plan['sweep']}: {counts['done']}/{len(plan['runs'])} done, "
            f"{counts['running']} running, {counts['failed']} failed, "
            f"{counts['pending']} pending{eta}")
    return "\n".join([head, *lines])
