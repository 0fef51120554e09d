"""`optiml eval`: a model on the three OPT-IML Bench levels, 0-shot and k-shot.

Tasks with answer options are scored by rank classification (accuracy), the others (and, under
the paper's protocol, every Super-NI task, §5.4) by greedy decoding (exact match and ROUGE-L).
Prompts are `</s> source` as in training; a k-shot prompt's demonstrations come from the task's
demonstration pool and never include the query. Which shots each task gets and how scores are
averaged is the protocol's (eval/protocol.py; the paper's by default).

Deterministic (greedy, fixed demonstration draws) and resumable: each (task, shots) pair is written
to `OUT/tasks/` as soon as it finishes, and a rerun with the same settings skips those files.

Under torchrun (WORLD_SIZE > 1) each rank holds only its part of a `--tp x --pp` layout and the
data-parallel replicas split the tasks (eval/distributed.py); rank 0 writes the same files.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from optiml_engine.errors import OptimlError
from optiml_engine.eval import metrics
from optiml_engine.eval.aggregate import aggregate
from optiml_engine.eval.generate import greedy_generate
from optiml_engine.eval.protocol import PAPER, EvalProtocol, add_arguments, protocol_from_args
from optiml_engine.eval.scoring import score_options
from optiml_engine.eval.suite import LEVELS, EvalTask, added_suite, load_suite, subset


@dataclass
class EvalSettings:
    shots: tuple[int, ...] = (0, 5)  # §4.1: 0-shot and 5-shot
    max_new_tokens: int = 256
    max_instances: int = 250  # §4.1: "a maximum of 250 prompts per task"; 0: all (test tasks)
    batch_size: int = 8
    seed: int = 0
    length_normalize: bool = False
    protocol: EvalProtocol = field(default_factory=lambda: PAPER)

    def shots_for(self, et: EvalTask) -> tuple[int, ...]:
        return self.protocol.shots_for(et.task.benchmark, et.task.category, self.shots)

    def all_shots(self, suite: list[EvalTask]) -> list[int]:
        return sorted({s for et in suite for s in self.shots_for(et)})


def _default_render(task, instance, shots, seed, pool, list_options=True):
    from optiml_engine.data.prompts import render

    return render(task, instance, shots=shots, seed=seed, pool=pool, list_options=list_options)


def _dataset_key(task, aliases: dict[str, str]) -> str:
    from optiml_engine.data.consolidate import dataset_key as key

    return key(task, aliases) if getattr(task, "dataset", "") else ""


def _task_languages_xlingual(task) -> bool:
    meta = getattr(task, "meta", None) or {}
    if "Input_language" not in meta and "Output_language" not in meta:
        return False
    return metrics.is_xlingual(meta.get("Input_language", ["English"]),
                               meta.get("Output_language", ["English"]))


def _headline(task, scores: dict, protocol: EvalProtocol) -> float:
    metric = getattr(task, "metric", "rouge_l")
    if "accuracy" in scores:
        return scores["accuracy"]
    if task.benchmark == "superni" and protocol.superni_scoring == "generate":
        return scores["rougeL"]  # §5.4: every Super-NI task by ROUGE-L
    return scores["exact_match"] if metric == "exact_match" else scores["rougeL"]


def _prompt_ids(tokenizer, source: str, max_len: int) -> list[int]:
    """`</s> source` in at most `max_len` tokens, the source cut from the left (the query and its
    answer cue sit at the end; instructions and demonstrations at the start)."""
    ids = tokenizer.encode(source)
    keep = max(max_len, 2) - 1
    return [tokenizer.eos_id, *ids[len(ids) - keep:]] if len(ids) > keep else [tokenizer.eos_id,
                                                                                  *ids]


def _fit_options(option_ids: list[list[int]], prompt_len: int, max_pos: int) -> list[list[int]]:
    """Options cut to their first tokens only where prompt + option cannot fit the positions
    and the option would leave the prompt less than half of them; otherwise unchanged."""
    limit = max_pos - min(prompt_len, max_pos // 2)
    return [ids[:limit] for ids in option_ids]


def evaluate_task(model, tokenizer, et: EvalTask, shots: int, settings: EvalSettings,
                  render=_default_render, progress=None) -> list[dict]:
    """Score `et`'s first `max_instances` instances with `shots` demonstrations; one record each."""
    task = et.task
    protocol = settings.protocol
    instances = et.instances[: settings.max_instances or None]
    max_pos = model.config.max_position_embeddings
    xlingual = _task_languages_xlingual(task)
    meta = getattr(task, "meta", None) or {}
    base = {"task": task.name, "category": task.category, "benchmark": task.benchmark,
            "level": et.level, "shots": shots,
            "dataset": meta.get("dataset_key") or _dataset_key(task, {}),
            "task_group": meta.get("task_group")}
    if render is _default_render:
        render = partial(_default_render, list_options=protocol.lists_options(task))
    ranked = protocol.ranks(task)
    rendered = [render(task, inst, shots, settings.seed, et.demo_pool) for inst in instances]
    # Longest first: batches hold prompts of similar length (less padding); order restored after.
    order = sorted(range(len(instances)), key=lambda i: -len(rendered[i][0]))
    records: list[dict | None] = [None] * len(instances)
    for start in range(0, len(order), settings.batch_size):
        batch = order[start: start + settings.batch_size]
        with_options = [i for i in batch if ranked and instances[i].options]
        free = [i for i in batch if i not in with_options]
        if with_options:
            option_ids = [_fit_options([tokenizer.encode(" " + o) for o in instances[i].options],
                                       len(tokenizer.encode(rendered[i][0])) + 1, max_pos)
                          for i in with_options]
            prompts = [_prompt_ids(tokenizer, rendered[i][0], max_pos - max(map(len, opts)))
                       for i, opts in zip(with_options, option_ids, strict=True)]
            results = score_options(model, prompts, option_ids, tokenizer.pad_id)
            for i, res in zip(with_options, results, strict=True):
                inst = instances[i]
                pick = inst.options[res.choice(settings.length_normalize)]
                scores = {"accuracy": metrics.accuracy(pick, inst.outputs)}
                scores["score"] = scores["accuracy"]
                records[i] = {**base, "id": inst.id, "kind": "rank", "prediction": pick,
                              "references": list(inst.outputs), "options": list(inst.options),
                              "log_likelihoods": res.log_likelihoods, "scores": scores}
        if free:
            budget = min(settings.max_new_tokens, max_pos - 2)
            prompts = [_prompt_ids(tokenizer, rendered[i][0], max_pos - budget) for i in free]
            outputs = greedy_generate(model, prompts, budget, tokenizer.eos_id, tokenizer.pad_id,
                                      vocab_limit=tokenizer.vocab_size)
            for i, out in zip(free, outputs, strict=True):
                inst = instances[i]
                text = tokenizer.decode(out).strip()
                scores = metrics.score_generation(text, inst.outputs, xlingual)
                scores["score"] = _headline(task, scores, protocol)
                records[i] = {**base, "id": inst.id, "kind": "generate", "prediction": text,
                              "references": list(inst.outputs), "scores": scores}
        if progress is not None:
            progress.update(len(batch))
    return records  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Whole runs


def _task_file(out: Path, et: EvalTask, shots: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in et.name)
    return out / "tasks" / et.level / f"{safe}__{shots}shot.json"


def _fingerprint(checkpoint: str, bench: str, settings: EvalSettings,
                 tokenizer: str | None = None) -> dict:
    fields = asdict(settings)
    fields.pop("shots")  # adding a shot count to a finished run is allowed
    fields = json.loads(json.dumps(fields))  # as run.json holds it (tuples are lists there)
    return {"checkpoint": str(checkpoint), "bench": str(bench), "tokenizer": tokenizer, **fields}


class OneProcess:
    """How `run_eval` shares work: here, alone. `eval/distributed.py` has the torchrun version
    (the replicas split the pairs; rank 0 decides, gathers and writes the report)."""

    writer = True  # writes this process's finished task files
    shows_progress = True
    is_main = True  # writes the report and prints

    @staticmethod
    def load_model(path: str, device: str, verify: bool = True):
        return load_model(path, device, verify)

    @staticmethod
    def init_model(config, seed: int, device: str):
        """The same architecture untrained: OPT's initialisation from `seed`."""
        from optiml_engine.model import OPTForCausalLM

        torch.manual_seed(seed)
        return OPTForCausalLM(config).to(device).eval()

    def close(self) -> None:
        pass

    def agree(self, decide):
        """`decide()` run once, its answer (or OptimlError) the same on every rank."""
        return decide()

    def mine(self, pending: list[int]) -> list[int]:
        """The pending (task, shots) pairs this process evaluates."""
        return pending

    def collect(self, finished: dict[int, list]) -> dict[int, list] | None:
        """Every process's finished pairs, on the process that reports (None elsewhere)."""
        return finished


def _start_run(out: Path, fingerprint: dict, paths: list[Path]) -> list[bool]:
    """Refuse another run's directory, record this one's settings; which pairs are done."""
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    if run_file.is_file() and (out / "tasks").is_dir():
        previous = json.loads(run_file.read_text())
        if previous != fingerprint:
            raise OptimlError(str(run_file), "this directory holds a run with other settings",
                              "use another --out, or delete it to start over")
    run_file.write_text(json.dumps(fingerprint, indent=1))
    return [path.is_file() for path in paths]


class LineProgress:
    """Progress for a log file (stderr is not a terminal): one line each time another `step`
    percent of the instances is done, never tqdm's carriage-return redraws of one line.
    The same calls as the tqdm bar: set_description, update, close."""

    def __init__(self, total: int, tasks: int, file=None, step: int = 5):
        self.total, self.tasks, self.step = total, tasks, step
        self.file = file if file is not None else sys.stderr
        self.done = self.started = 0
        self.shown = -1  # the last percentage printed
        self.what = ""
        self.start = time.perf_counter()

    def set_description(self, what: str) -> None:
        self.what, self.started = what, self.started + 1

    def update(self, n: int) -> None:
        self.done += n
        percent = 100 * self.done // max(self.total, 1)
        if percent // self.step > self.shown // self.step or self.done >= self.total:
            self.shown = percent
            seconds = time.perf_counter() - self.start
            print(f"eval: {percent}% ({self.done}/{self.total} instances, task "
                  f"{self.started}/{self.tasks}: {self.what}) {seconds:.0f} s", file=self.file,
                  flush=True)

    def close(self) -> None:
        pass


def _progress(total: int, tasks: int, show: bool):
    """tqdm on a terminal, `LineProgress` in a log file, nothing when not shown."""
    from tqdm.auto import tqdm

    if show and not sys.stderr.isatty():
        return LineProgress(total, tasks)
    return tqdm(total=total, unit="ex", disable=not show, dynamic_ncols=True)


def run_eval(model, tokenizer, suite: list[EvalTask], settings: EvalSettings, out_dir,
             fingerprint: dict | None = None, render=_default_render,
             show_progress: bool = True, ranks=None) -> list[dict] | None:
    """Every (task, shots) pair of `suite`, resuming from what `out_dir/tasks` already holds.
    `ranks` (default: one process) shares the pairs out; None is returned where it collects
    nothing (the other ranks of a distributed run)."""
    ranks = ranks or OneProcess()
    out = Path(out_dir)
    pairs = [(et, shots, _task_file(out, et, shots)) for shots in settings.all_shots(suite)
             for et in suite if shots in settings.shots_for(et)]
    done = ranks.agree(lambda: _start_run(out, fingerprint or {}, [p for *_, p in pairs]))
    todo = ranks.mine([i for i, finished in enumerate(done) if not finished])
    model.eval()
    total = sum(len(pairs[i][0].instances[: settings.max_instances or None]) for i in todo)
    finished: dict[int, list] = {}
    bar = _progress(total, len(todo), show_progress and ranks.shows_progress)
    try:
        for i in todo:
            et, shots, path = pairs[i]
            bar.set_description(f"{et.name[:40]} {shots}-shot")
            finished[i] = evaluate_task(model, tokenizer, et, shots, settings, render, bar)
            if ranks.writer:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(finished[i], ensure_ascii=False))
                tmp.replace(path)  # a crash never leaves a half-written task behind
    finally:
        bar.close()
    collected = ranks.collect(finished)
    if collected is None:
        return None
    records: list[dict] = []
    for i, (_, _, path) in enumerate(pairs):  # finished by an earlier run, or by this one
        records += json.loads(path.read_text()) if done[i] else collected[i]
    return records


# Without tokenizer files, an HF directory's model is taken for a byte-level one only when its
# vocabulary could hold nothing else (the byte tokenizer has 260 ids; GPT-2 BPE 50265).
BYTE_VOCAB_MAX = 1024


def checkpoint_source(path: str) -> tuple[str, Path, str | None]:
    """("hf", directory, tokenizer spec) for a Hugging Face OPT directory (spec None when it
    holds no tokenizer files), or ("engine", step directory, spec) for an engine checkpoint (a
    checkpoint.dir: its latest step)."""
    from optiml_engine.distributed import checkpoint as ckpt

    p = Path(path)
    if (p / "config.json").is_file():
        has_bpe = (p / "tokenizer.json").is_file() or (
            (p / "vocab.json").is_file() and (p / "merges.txt").is_file())
        return "hf", p, str(p) if has_bpe else None
    if p.exists():
        step = p if ckpt.is_complete(p) else (ckpt.latest_checkpoint(p) or p)
        recipe = ckpt.read_meta(step).get("recipe") or {}
        return "engine", step, recipe.get("data", {}).get("tokenizer", "byte")
    raise OptimlError(f"--checkpoint {path}", "not found",
                      "pass an engine checkpoint directory or a Hugging Face OPT directory")


def choose_tokenizer(tokenizer: str | None, checkpoint: str) -> tuple[str, str | None]:
    """(tokenizer spec, a note to print or None): `--tokenizer`, else the checkpoint's own. An
    HF directory without tokenizer files is refused unless its vocabulary fits only the byte
    tokenizer (then it is used, and said so)."""
    if tokenizer:
        return tokenizer, None
    kind, where, spec = checkpoint_source(checkpoint)
    if spec is not None:
        return spec, None
    from optiml_engine.model.hf_io import read_hf_config

    vocab = read_hf_config(where).vocab_size
    present = [n for n in ("vocab.json", "merges.txt") if (where / n).is_file()]
    missing = ("tokenizer.json, or vocab.json + merges.txt" if not present else
               f"tokenizer.json, or {'merges.txt' if 'vocab.json' in present else 'vocab.json'}"
               f" beside {present[0]}")
    if vocab > BYTE_VOCAB_MAX:
        raise OptimlError(f"--checkpoint {checkpoint}",
                          f"no tokenizer files in this Hugging Face directory ({missing}); "
                          f"its {vocab}-token vocabulary needs its own tokenizer",
                          "pass --tokenizer with the model's tokenizer.json or vocab.json + "
                          "merges.txt directory, or copy them into the directory")
    return "byte", (f"{where} has no tokenizer files ({missing}); its {vocab}-token vocabulary "
                    "fits the byte tokenizer, which is used (--tokenizer chooses another)")


def load_model(path: str, device: str = "cpu", verify: bool = True):
    """(model, tokenizer spec) from a Hugging Face OPT directory or an engine checkpoint (its
    files checked against their checksums unless verify is off)."""
    from optiml_engine.model import OPTForCausalLM
    from optiml_engine.model.convert import load_engine_model

    kind, where, spec = checkpoint_source(path)
    model = OPTForCausalLM.from_hf(where) if kind == "hf" else load_engine_model(where, verify)
    return model.to(device).eval(), spec


def _parse_shots(text: str) -> tuple[int, ...]:
    try:
        shots = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        shots = ()
    if not shots or any(s < 0 for s in shots):
        raise OptimlError(f"--shots {text}", "not a list of non-negative integers", "e.g. 0,5")
    return shots


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="optiml eval", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="engine checkpoint or HF OPT directory")
    p.add_argument("--bench", required=True, help="bench manifest (or its directory), or "
                   "'synthetic[:SEED]'")
    p.add_argument("--shots", help="comma-separated numbers of demonstrations for every task "
                   "(default: 0,5, with the protocol's --benchmark-shots: Super-NI 0,2,5, BBH 3; "
                   "given, these shots for every task unless --benchmark-shots is given too)")
    p.add_argument("--out", required=True, help="output directory (results, report, charts)")
    p.add_argument("--tokenizer", help="'byte', a tokenizer.json, or a directory with "
                   "vocab.json + merges.txt (default: the checkpoint's own; needed for an HF "
                   "directory without tokenizer files)")
    p.add_argument("--no-verify", action="store_true",
                   help="load engine checkpoints without checking their files' checksums "
                   "(faster on large checkpoints; trusts the disk)")
    p.add_argument("--max-instances", type=int, default=250,
                   help="instances per task, 0 for all (default: %(default)s, the paper's for "
                   "validation tasks; it keeps all of a test task's: pass 0 there)")
    p.add_argument("--suite", action="append", default=[], metavar="FORMAT=PATH[@LEVEL]",
                   help="also evaluate an added benchmark: mmlu, bbh or raft files at PATH "
                   "(level default: mmlu heldout_task, bbh and raft heldout_category); repeatable")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="greedy decoding budget (default: %(default)s, as OPT-IML)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="prompts per batch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the demonstration draws (default: %(default)s)")
    p.add_argument("--length-normalize", action="store_true",
                   help="rank options by mean token log-likelihood (default: the sum)")
    add_arguments(p)
    p.add_argument("--levels", help=f"comma-separated levels to run, of {', '.join(LEVELS)} "
                   "(default: all)")
    p.add_argument("--history", help="in-training evaluations (JSONL) to chart against steps "
                   "(default: none)")
    p.add_argument("--baseline", help="also evaluate this model (a checkpoint, an HF directory, or "
                   "'init': the same architecture untrained) and print both tables side by side "
                   "(default: none)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available, else cpu: here %(default)s)")
    p.add_argument("--tp", type=int, help="under torchrun: tensor-parallel ranks per model "
                   "replica (default: the processes / --pp)")
    p.add_argument("--pp", type=int, default=1,
                   help="under torchrun: pipeline stages (default: %(default)s)")
    return p


def _select_levels(suite: list[EvalTask], text: str) -> list[EvalTask]:
    """The tasks of the comma-separated levels `text`; a name no level has is refused with the
    valid names (the three of OPT-IML Bench, and any other level the suite holds)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    valid = list(LEVELS) + sorted({et.level for et in suite} - set(LEVELS))
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise OptimlError(f"--levels {text}", f"unknown level '{name}'",
                              f"{hint}valid: {', '.join(valid)}")
    return [et for et in suite if et.level in names]


def main(argv: list[str] | None = None) -> int:
    """One process, or under torchrun (WORLD_SIZE > 1) each rank's part of a --tp x --pp
    layout (eval/distributed.py); rank 0 alone writes and prints."""
    from optiml_engine.eval import distributed

    args = build_parser().parse_args(argv)
    args.shots_given = args.shots is not None
    if args.max_instances < 0:
        raise OptimlError(f"--max-instances {args.max_instances}", "is negative",
                          "pass a count, or 0 for all instances")
    settings = EvalSettings(shots=_parse_shots(args.shots or "0,5"),
                            max_new_tokens=args.max_new_tokens,
                            max_instances=args.max_instances, batch_size=args.batch_size,
                            seed=args.seed, length_normalize=args.length_normalize,
                            protocol=protocol_from_args(args))
    suite = load_suite(args.bench) + [et for spec in args.suite for et in added_suite(spec)]
    if args.levels:
        suite = _select_levels(suite, args.levels)
    if not suite:
        raise OptimlError(f"--bench {args.bench}", "no evaluation tasks", "check the bench/levels")
    for path in (args.checkpoint, args.baseline):  # fail fast, before any process group
        if path and path != "init":
            checkpoint_source(path)
    args.tokenizer, args.tokenizer_note = choose_tokenizer(args.tokenizer, args.checkpoint)
    ranks = (distributed.DistributedEval(args.tp, args.pp, args.device)
             if distributed.launched() else OneProcess())
    try:
        return _evaluate_all(args, settings, suite, ranks)
    finally:
        ranks.close()


def _evaluate_all(args, settings, suite, ranks) -> int:
    from optiml_engine.data.tokenizer import load_tokenizer
    from optiml_engine.eval.report import group_table, side_by_side

    model, _ = ranks.load_model(args.checkpoint, args.device, not args.no_verify)
    tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise OptimlError(f"tokenizer {args.tokenizer}",
                          f"{tokenizer.vocab_size} tokens, more than the model's "
                          f"{model.config.vocab_size}", "pass the model's own --tokenizer")
    if ranks.is_main and getattr(args, "tokenizer_note", None):
        print(f"optiml: note: {args.tokenizer_note}", file=sys.stderr)
    if Path(args.tokenizer).is_dir():
        try:  # the official xlingual ROUGE-L tokens are GPT-2 BPE, as OPT's tokenizer is
            metrics.set_xlingual_tokenizer(args.tokenizer)
        except OptimlError:
            pass
    summary = _evaluate_and_report(model, tokenizer, suite, settings, args.checkpoint, args,
                                   Path(args.out), ranks)
    reports = ranks.is_main  # under torchrun, rank 0 alone
    if reports:
        print(group_table(summary, "level"))
    if args.baseline:
        if args.baseline == "init":
            base = ranks.init_model(model.config, args.seed, args.device)
        else:
            base, _ = ranks.load_model(args.baseline, args.device, not args.no_verify)
        base_summary = _evaluate_and_report(base, tokenizer, suite, settings, args.baseline, args,
                                            Path(args.out) / "baseline", ranks)
        if reports:
            table = side_by_side({"baseline": base_summary, "model": summary})
            with (Path(args.out) / "report.md").open("a") as f:
                f.write(f"\n## Against the baseline ({args.baseline})\n\n{table}\n")
            print(table)
    if reports:
        print(f"wrote {Path(args.out) / 'report.md'}")
    return 0


def _evaluate_and_report(model, tokenizer, suite, settings, checkpoint, args, out: Path,
                         ranks=None) -> dict | None:
    from optiml_engine.eval.report import load_history, write_report

    start = time.time()
    fingerprint = _fingerprint(checkpoint, args.bench, settings, args.tokenizer)
    records = run_eval(model, tokenizer, suite, settings, out, fingerprint, ranks=ranks)
    if records is None:  # another rank reports
        return None
    suite_key = json.dumps(sorted((et.level, et.name, len(et.instances)) for et in suite))
    meta = {**fingerprint, "shots": settings.all_shots(suite), "instances": len(records),
            "seconds": round(time.time() - start, 1),
            "suite_hash": hashlib.sha256(suite_key.encode()).hexdigest()[:16]}
    history = load_history(args.history) if args.history else None
    meta["protocol"] = asdict(settings.protocol)
    return write_report(out, records, meta, history, settings.protocol)


# --------------------------------------------------------------------------------------------
# During training


SUBSET_PREFIX = "eval/subset/"  # never "eval/level/...": a subset is not the full evaluation


class TrainingEvaluator:
    """A fixed, stratified subset of a bench (`suite.subset`), evaluated every `eval.interval`
    steps by the trainer.

    `__call__(model, step)` returns {"eval/subset/level/<level>/<k>shot": score} (and
    "eval/subset/benchmark/<name>/<k>shot") for the logger, and appends them to `history_path`
    (JSONL) for the report's line chart. The names say "subset" so that these scores are never
    read as those of `optiml eval` (all tasks, all instances).
    """

    def __init__(self, eval_cfg, tokenizer, history_path: str | Path | None = None,
                 render=_default_render):
        self.tokenizer = tokenizer
        self.render = render
        from optiml_engine.eval.protocol import PRESETS

        # The recipe's shots for every task of the subset (a cheap monitor: no per-benchmark
        # shots); the rest of the protocol (scoring, averaging) is eval.protocol's preset.
        protocol = replace(PRESETS[eval_cfg.protocol], benchmark_shots={})
        self.settings = EvalSettings(shots=tuple(eval_cfg.shots),
                                     max_new_tokens=eval_cfg.max_new_tokens,
                                     max_instances=eval_cfg.subset_instances,
                                     batch_size=eval_cfg.batch_size,
                                     length_normalize=eval_cfg.length_normalize,
                                     protocol=protocol)
        self.suite = subset(load_suite(eval_cfg.bench), eval_cfg.subset_tasks,
                            eval_cfg.subset_instances, protocol)
        self.history_path = Path(history_path) if history_path else None

    def __call__(self, model, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            records = []
            for shots in self.settings.all_shots(self.suite):
                for et in self.suite:
                    if shots in self.settings.shots_for(et):
                        records += evaluate_task(model, self.tokenizer, et, shots,
                                                 self.settings, self.render)
        finally:
            model.train(was_training)
        summary = aggregate(records, self.settings.protocol)
        scalars = {}
        for shots, groups in summary.items():
            for kind in ("level", "benchmark"):
                for name, values in groups[kind].items():
                    scalars[f"{SUBSET_PREFIX}{kind}/{name}/{shots}shot"] = values["score"]
        if self.history_path is not None:
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            with self.history_path.open("a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")
        return scalars
