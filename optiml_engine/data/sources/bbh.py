"""BIG-Bench Hard (Suzgun et al., 2022) in its release layout: one `<task>.json` per task,
`{"examples": [{"input": ..., "target": ...}, ...]}` (other top-level keys, such as `canary`,
are allowed and ignored by design: they carry no examples).

Scored by greedy generation and exact match against `target` (§6.1), 3-shot. The release keeps
its few-shot exemplars apart from the data; without them, the first `DEMOS` examples of each
file are the demonstration pool (`meta["demo_ids"]`) and never scored, the rest are scored
(`meta["eval_ids"]`), so no scored example is ever another's demonstration.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import OptimlError
from ..task import Instance, Task
from .common import expand, read_json, require_str

DEMOS = 3  # §6.1 / Suzgun et al.: 3-shot
FIX = 'write {"examples": [{"input": "...", "target": "..."}]}'


def load_bbh(path: str | Path) -> list[Task]:
    tasks = []
    for file in expand(path, (".json",)):
        data = read_json(file)
        examples = data.get("examples") if isinstance(data, dict) else None
        if not isinstance(examples, list) or not examples:
            raise OptimlError(f"{file}: examples", "missing, empty or not a list", FIX)
        if len(examples) <= DEMOS:
            raise OptimlError(f"{file}: examples", f"{len(examples)} examples: none left to "
                              f"score after the {DEMOS} demonstrations", "use the full task file")
        name = f"bbh_{file.stem}"
        instances = []
        for i, ex in enumerate(examples):
            where = f"{file}: examples[{i}]"
            if not isinstance(ex, dict):
                raise OptimlError(where, "not an object", FIX)
            instances.append(Instance(id=f"{name}-{i}", input=require_str(ex, "input", where),
                                      outputs=[require_str(ex, "target", where)]))
        ids = [inst.id for inst in instances]
        tasks.append(Task(name=name, benchmark="bbh", category="BIG-Bench Hard", definition="",
                          instances=instances, metric="exact_match", dataset=name,
                          source=str(file),
                          meta={"demo_ids": ids[:DEMOS], "eval_ids": ids[DEMOS:]}))
    if not tasks:
        raise OptimlError(str(path), "no <task>.json files", "point at the BBH release's bbh/")
    return tasks
