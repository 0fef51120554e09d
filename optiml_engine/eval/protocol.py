"""The evaluation protocol: which shots each task gets, how it is scored, and how instance scores
become task, category and level scores. The defaults are the paper's (§4.1, §5.2-5.4, §6.1);
docs/paper-fidelity.md ("Evaluation protocol") lists each rule with its key and test.

`optiml eval` sets these from its flags (`--help`); the in-training evaluator from `eval.*` of the
recipe. `engine` names the engine's earlier choices, for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from optiml_engine.errors import OptimlError

SUPERNI_SCORING = ("generate", "rank")
CATEGORY_SCORES = ("task_means", "instances")
LEVEL_SCORES = ("category_means", "task_means")
# Benchmarks whose instruction sits in per-example templates: one dataset is one task, whatever
# number of template tasks a bench split it into (§4.1: FLAN and PromptSource over their prompts).
TEMPLATED = ("promptsource", "flan")


def _paper_benchmark_shots() -> dict[str, tuple[int, ...]]:
    # §5.4, Table 12: Super-NI at 0, 2 and 5 shots; §6.1 / Suzgun et al.: BBH 3-shot.
    return {"superni": (0, 2, 5), "bbh": (3,)}


@dataclass(frozen=True)
class EvalProtocol:
    # Shots of a benchmark listed here replace the run's shots (`--benchmark-shots`).
    benchmark_shots: dict[str, tuple[int, ...]] = field(default_factory=_paper_benchmark_shots)
    # §4.1, Tables 4-9: "We use only 0-shot performance for summarization tasks".
    zero_shot_categories: tuple[str, ...] = ("Summarization",)
    # §5.4: every Super-NI task by greedy generation + ROUGE-L, never rank classification.
    superni_scoring: str = "generate"
    # §5.4 / Super-NI's own format: the definition states the candidates; no "Options:" list.
    # None: as the built bench's training prompts (its manifest says), off elsewhere.
    superni_options_list: bool | None = None
    # §4.1 model selection: template tasks of one dataset, and subtasks of one task (MMLU's 57
    # subjects), are averaged into one task first.
    group_tasks: bool = True
    # §4.1: "If the same task exists across multiple benchmarks, we then average performance
    # across benchmarks as well."
    merge_benchmarks: bool = True
    # §4.1: "0-shot and 5-shot averages of all tasks within a category".
    category_score: str = "task_means"
    # Engine decision: a level is the mean of its categories (the paper selects on them).
    level_score: str = "category_means"

    def __post_init__(self):
        for name, value, choices in (("superni_scoring", self.superni_scoring, SUPERNI_SCORING),
                                     ("category_score", self.category_score, CATEGORY_SCORES),
                                     ("level_score", self.level_score, LEVEL_SCORES)):
            if value not in choices:
                raise OptimlError(f"eval protocol: {name}", f"{value!r} is not one of "
                                  f"{', '.join(choices)}", f"use one of {', '.join(choices)}")
        for bench, shots in self.benchmark_shots.items():
            if not shots or any(not isinstance(s, int) or s < 0 for s in shots):
                raise OptimlError(f"eval protocol: benchmark_shots.{bench}",
                                  f"{shots!r} is not a list of non-negative integers", "e.g. 0,5")

    def shots_for(self, benchmark: str, category: str, shots: tuple[int, ...]) -> tuple[int, ...]:
        """The shot counts one task is evaluated at, of the run's `shots`."""
        mine = tuple(self.benchmark_shots.get(benchmark, shots))
        if category in self.zero_shot_categories:
            mine = tuple(s for s in mine if s == 0)
        return mine

    def ranks(self, task) -> bool:
        """Whether `task` (with answer options) is scored by rank classification."""
        has_options = any(inst.options for inst in task.instances)
        return has_options and not (task.benchmark == "superni"
                                    and self.superni_scoring == "generate")

    def lists_options(self, task) -> bool:
        if task.benchmark != "superni":
            return True
        if self.superni_options_list is None:
            return bool((getattr(task, "meta", None) or {}).get("trained_options_list", False))
        return self.superni_options_list


# The engine's choices before the paper's protocol: every shot for every task, Super-NI label
# tasks ranked with an options list, categories pooled over instances, levels over tasks.
ENGINE = EvalProtocol(benchmark_shots={}, zero_shot_categories=(), superni_scoring="rank",
                      superni_options_list=True, group_tasks=False, merge_benchmarks=False,
                      category_score="instances", level_score="task_means")
PAPER = EvalProtocol()
PRESETS = {"paper": PAPER, "engine": ENGINE}


def parse_benchmark_shots(text: str) -> dict[str, tuple[int, ...]]:
    """`superni=0,2,5;bbh=3` (or `none`) into {benchmark: shots}."""
    if text.strip().lower() in ("", "none"):
        return {}
    out = {}
    for part in text.split(";"):
        name, eq, values = part.partition("=")
        try:
            shots = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError:
            shots = ()
        if not eq or not name.strip() or not shots or any(s < 0 for s in shots):
            raise OptimlError(f"--benchmark-shots {text}", f"cannot read {part!r}",
                              "write BENCHMARK=SHOTS;..., e.g. superni=0,2,5;bbh=3, or none")
        out[name.strip()] = shots
    return out


def protocol_from_args(args) -> EvalProtocol:
    """The preset of `--protocol`, with each flag given on top of it."""
    base = PRESETS[args.protocol]
    changes: dict = {}
    if args.benchmark_shots is not None:
        changes["benchmark_shots"] = parse_benchmark_shots(args.benchmark_shots)
    elif args.shots_given:  # explicit --shots mean those shots for every task
        changes["benchmark_shots"] = {}
    if args.zero_shot_categories is not None:
        text = args.zero_shot_categories.strip()
        changes["zero_shot_categories"] = () if text.lower() in ("", "none") else tuple(
            c.strip() for c in text.split(",") if c.strip())
    for name in ("superni_scoring", "category_score", "level_score"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    for name in ("superni_options_list", "group_tasks", "merge_benchmarks"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name) == "on"
    return replace(base, **changes)


def add_arguments(p) -> None:
    """The protocol's flags of `optiml eval` (each default: the --protocol preset's value)."""
    p.add_argument("--protocol", choices=sorted(PRESETS), default="paper",
                   help="preset of the rules below: the paper's (§4.1, §5.4) or the engine's "
                   "earlier ones (default: %(default)s)")
    p.add_argument("--benchmark-shots", help="per-benchmark shots replacing --shots, e.g. "
                   "'superni=0,2,5;bbh=3' (paper; given --shots alone: none), or 'none'")
    p.add_argument("--zero-shot-categories", help="comma-separated categories evaluated 0-shot "
                   "only (paper: Summarization), or 'none'")
    p.add_argument("--superni-scoring", choices=SUPERNI_SCORING,
                   help="Super-NI tasks with answer options: greedy generation + ROUGE-L "
                   "(paper) or rank classification")
    p.add_argument("--superni-options-list", choices=("on", "off"),
                   help="list a Super-NI task's options after its input (default: as the "
                   "built bench's superni_options_list, off elsewhere: the paper's)")
    p.add_argument("--group-tasks", choices=("on", "off"), help="average a dataset's template "
                   "tasks and a task's subtasks (MMLU subjects) into one task (paper: on)")
    p.add_argument("--merge-benchmarks", choices=("on", "off"), help="average the same dataset "
                   "across benchmarks into one task (paper: on)")
    p.add_argument("--category-score", choices=CATEGORY_SCORES,
                   help="a category: mean of its task scores (paper) or of its instances")
    p.add_argument("--level-score", choices=LEVEL_SCORES,
                   help="a level: mean of its category scores (paper's selection) or of its tasks")
