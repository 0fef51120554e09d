"""Super-NaturalInstructions task files (`tasks/taskNNN_name.json`) and split files.

Every field of the official schema is read: `Definition` (a list, or a plain string in old
versions), `Positive/Negative Examples`, `Instances` (each `output` a list of references),
`Categories`, `Domains`, `Reasoning`, `Source`, `Input/Output/Instruction_language`, `URL`,
`Contributors`, `Instance License`. Quirks tolerated: a bare `NaN` where a string is expected
(some upstream synthetic tasks store `"URL": [NaN]`): dropped and counted in `meta["nan_dropped"]`;
an `output` given as a single string is wrapped in a list.

Answer options: Super-NI has no options field. We read our extension keys (`Answer Options` on the
task, `options` on an instance) when present; otherwise a task whose instances each have one output
drawn from a small label set (at most 10 labels, each used on average 4+ times) is treated as
classification with those labels as options. `Metric` (our extension) overrides the metric; a
declared free-form metric turns the inference off.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import OptimlError, read_text
from ..task import METRICS, Example, Instance, Task
from .common import expand, read_json, require_str, string_list

LIST_FIELDS = ("Contributors", "Source", "URL", "Categories", "Reasoning", "Input_language",
               "Output_language", "Instruction_language", "Domains", "Instance License")
MAX_INFERRED_LABELS = 10


def parse_superni(obj: object, name: str, where: str) -> Task:
    """One Super-NI task object into a Task; `where` names the file in errors."""
    if not isinstance(obj, dict):
        raise OptimlError(where, "a Super-NI task file must hold one JSON object",
                          "see the Super-NI task schema")
    meta: dict = {"nan_dropped": 0}
    for key in LIST_FIELDS:
        meta[key], nans = string_list(obj.get(key))
        meta["nan_dropped"] += nans
    definition, nans = string_list(obj.get("Definition"))
    meta["nan_dropped"] += nans
    if not definition:
        raise OptimlError(where, "field 'Definition' is missing or empty",
                          "give the task instruction as a list of one string")
    if not meta["Categories"]:
        raise OptimlError(where, "field 'Categories' is missing or empty",
                          "give the task type, e.g. [\"Sentiment Analysis\"]")
    positives = _examples(obj.get("Positive Examples", []), f"{where}: Positive Examples")
    negatives = _examples(obj.get("Negative Examples", []), f"{where}: Negative Examples")
    raw = obj.get("Instances")
    if not isinstance(raw, list):
        raise OptimlError(where, "field 'Instances' is missing or not a list",
                          "give a list of {id, input, output} objects")
    task_options = _options(obj.get("Answer Options"), f"{where}: Answer Options")
    instances = [_instance(rec, i, name, f"{where}: Instances[{i}]", task_options)
                 for i, rec in enumerate(raw)]
    declared = obj.get("Metric")
    free_form = declared is not None and declared != "accuracy"
    if task_options is None and not free_form and not any(inst.options for inst in instances):
        inferred = infer_options(instances)
        if inferred:
            meta["options_inferred"] = True
            for inst in instances:
                inst.options = list(inferred)
    metric = declared or ("accuracy" if any(i.options for i in instances) else "rouge_l")
    if metric not in METRICS:
        raise OptimlError(f"{where}: Metric", f"unknown metric {metric!r}",
                          f"use one of {', '.join(METRICS)}")
    return Task(name=name, benchmark="superni", category=meta["Categories"][0],
                definition=" ".join(definition), instances=instances,
                positive_examples=positives, negative_examples=negatives, metric=metric,
                dataset=(meta["Source"] or [name])[0].lower(), source=where, meta=meta)


def infer_options(instances: list[Instance]) -> list[str] | None:
    """The label set of a classification task, or None if the outputs look free-form."""
    if not instances or any(len(inst.outputs) != 1 for inst in instances):
        return None
    labels = sorted({inst.outputs[0] for inst in instances})
    if len(labels) > MAX_INFERRED_LABELS or len(labels) * 4 > len(instances):
        return None
    return labels


def _examples(raw: object, where: str) -> list[Example]:
    if not isinstance(raw, list):
        raise OptimlError(where, "must be a list of {input, output, explanation} objects")
    out = []
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict):
            raise OptimlError(f"{where}[{i}]", "example is not an object")
        output = rec.get("output")
        if isinstance(output, list):  # a few files list the output; keep the first
            output = output[0] if output else ""
        if not isinstance(output, str):
            raise OptimlError(f"{where}[{i}]", "field 'output' is missing or not a string")
        explanation = rec.get("explanation")
        out.append(Example(require_str(rec, "input", f"{where}[{i}]"), output,
                           explanation if isinstance(explanation, str) else ""))
    return out


def _options(raw: object, where: str) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(o, str) for o in raw):
        raise OptimlError(where, "answer options must be a non-empty list of strings")
    return list(raw)


def _instance(rec: object, index: int, task: str, where: str,
              task_options: list[str] | None) -> Instance:
    if not isinstance(rec, dict):
        raise OptimlError(where, "instance is not an object", "give {id, input, output}")
    text = require_str(rec, "input", where)
    outputs = rec.get("output")
    if isinstance(outputs, str):
        outputs = [outputs]
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
        raise OptimlError(where, "field 'output' must be a non-empty list of strings",
                          "give every acceptable reference as a string in the list")
    options = _options(rec.get("options"), f"{where}: options") or task_options
    if options is not None and not any(o in options for o in outputs):
        raise OptimlError(where, f"no reference output {outputs!r} is among the options",
                          "add the answer to the options")
    inst_id = rec.get("id")
    return Instance(id=inst_id if isinstance(inst_id, str) else f"{task}-{index}", input=text,
                    outputs=list(outputs), options=None if options is None else list(options))


def read_split_file(path: Path) -> list[str]:
    """Task names listed in a Super-NI split file (`train_tasks.txt` / `test_tasks.txt` /
    `excluded_tasks.txt`)."""
    lines = read_text(path, "check the split file").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


SPLITS = ("train", "test", "excluded")  # a task listed in several: the last wins


def find_split_files(root: Path) -> dict[str, Path]:
    """`train`/`test`/`excluded` split files of a checkout (`splits/default/`), or beside the
    task files. `excluded_tasks.txt` lists the tasks built from the same data source as a test
    task; they are in neither the train nor the test split."""
    found = {}
    for split in SPLITS:
        for candidate in (root / "splits" / "default" / f"{split}_tasks.txt",
                          root / f"{split}_tasks.txt", root.parent / "splits" / "default" /
                          f"{split}_tasks.txt"):
            if candidate.is_file():
                found[split] = candidate
                break
    return found


def load_superni(path: str | Path, split: str | None = None,
                 errors: list[tuple[str, str]] | None = None) -> list[Task]:
    """Task files at `path` (a file, a `tasks/` directory, or a checkout root holding `tasks/`).

    When split files are found, each task's `meta["split"]` says `train`/`test`/`excluded`;
    `split` keeps
    only the tasks listed in that split. With an `errors` list, a bad file is recorded there as
    (file, message) and skipped instead of failing the whole load.
    """
    root = Path(path)
    task_dir = root / "tasks" if (root / "tasks").is_dir() else root
    files = [p for p in expand(task_dir, (".json",)) if p.name.startswith("task")]
    splits = {name: read_split_file(p) for name, p in
              (find_split_files(root if root.is_dir() else root.parent).items())}
    if split is not None and split not in splits:
        raise OptimlError(str(path), f"no {split}_tasks.txt split file found",
                          "put splits/default/{train,test}_tasks.txt beside tasks/")
    membership = {task: name for name, tasks in splits.items() for task in tasks}
    tasks = []
    for file in files:
        try:
            task = parse_superni(read_json(file), file.stem, str(file))
        except OptimlError as err:
            if errors is None:
                raise
            errors.append((str(file), str(err)))
            continue
        if file.stem in membership:
            task.meta["split"] = membership[file.stem]
        if split is None or task.meta.get("split") == split:
            tasks.append(task)
    return tasks
