"""The harness: levels, k-shot demonstrations, determinism, resume, the CLI entry and the
in-training evaluator, on a tiny random model with the byte tokenizer."""

import json

import pytest

from optiml_engine.data.prompts import render
from optiml_engine.data.task import Instance, Task
from optiml_engine.data.tokenizer import ByteTokenizer
from optiml_engine.errors import OptimlError
from optiml_engine.eval.generate import greedy_generate
from optiml_engine.eval.harness import EvalSettings, evaluate_task, main, run_eval
from optiml_engine.eval.suite import EvalTask, subset, synthetic_suite


def _task(name, category, n, options=None, metric="exact_match"):
    insts = [Instance(f"{name}-{i}", f"q{i}{name[-1]}", [options[i % 2] if options else f"a{i}"],
                      options) for i in range(n)]
    # not Super-NI: its label tasks are scored by generation under the paper's protocol
    return Task(name=name, benchmark="crossfit", category=category, definition="Do it.",
                instances=insts, metric=metric)


def _suite():
    gen = _task("taskA", "cat1", 6)
    cls = _task("taskB", "cat2", 5, options=["yes", "no"])
    seen = _task("taskC", "cat1", 8)
    return [EvalTask(gen, "heldout_task", gen.instances),
            EvalTask(cls, "heldout_category", cls.instances),
            EvalTask(seen, "heldout_instance", seen.instances[5:], seen.instances[:5])]


class Recorder:
    """prompts.render, remembering every (task, query, shots, source)."""

    def __init__(self):
        self.calls = []

    def __call__(self, task, inst, shots, seed, pool):
        source, target = render(task, inst, shots=shots, seed=seed, pool=pool)
        self.calls.append((task.name, inst, shots, source))
        return source, target


SETTINGS = EvalSettings(shots=(0, 2), max_new_tokens=4, batch_size=3)


@pytest.fixture
def model(tiny_models):
    return tiny_models[0]


def test_levels_kshot_and_records(model, tmp_path):
    rec = Recorder()
    records = run_eval(model, ByteTokenizer(), _suite(), SETTINGS, tmp_path, render=rec,
                       show_progress=False)
    assert len(records) == 2 * (6 + 5 + 3)
    levels = {(r["task"], r["level"]) for r in records}
    assert levels == {("taskA", "heldout_task"), ("taskB", "heldout_category"),
                      ("taskC", "heldout_instance")}
    for r in records:
        assert r["kind"] == ("rank" if r["task"] == "taskB" else "generate")
        if r["kind"] == "rank":
            assert r["prediction"] in ["yes", "no"] and len(r["log_likelihoods"]) == 2
            best = max(range(2), key=r["log_likelihoods"].__getitem__)
            assert r["prediction"] == r["options"][best]
            assert r["scores"]["score"] == (100.0 if r["prediction"] in r["references"] else 0.0)
    pool_c = {i.input for i in _suite()[2].demo_pool}
    for name, inst, shots, source in rec.calls:
        # the query appears once, as the last block; 2-shot prompts hold 2 other instances
        assert source.count(f"Input: {inst.input}\n") == 1
        assert source.split("\n\n")[-1].startswith(f"Input: {inst.input}\n")
        assert source.count("Input: ") == 1 + shots
        if name == "taskC":  # held-out instances: demonstrations from training instances only
            demos = [b.split("\n")[0][len("Input: "):] for b in source.split("\n\n")[1:-1]]
            assert set(demos) <= pool_c


def test_deterministic_and_resumable(model, tmp_path):
    first = run_eval(model, ByteTokenizer(), _suite(), SETTINGS, tmp_path / "a",
                     show_progress=False)
    again = run_eval(model, ByteTokenizer(), _suite(), SETTINGS, tmp_path / "b",
                     show_progress=False)
    assert first == again
    files = sorted((tmp_path / "a" / "tasks").rglob("*.json"))
    assert len(files) == 6
    files[0].unlink()  # as if the run had crashed before this task
    rec = Recorder()
    resumed = run_eval(model, ByteTokenizer(), _suite(), SETTINGS, tmp_path / "a", render=rec,
                       show_progress=False)
    assert resumed == first
    redone = {(name, shots) for name, _, shots, _ in rec.calls}
    assert len(redone) == 1  # only the missing (task, shots) pair ran again


def test_other_settings_refuse_to_resume(model, tmp_path):
    run_eval(model, ByteTokenizer(), _suite()[:1], SETTINGS, tmp_path, {"seed": 0},
             show_progress=False)
    with pytest.raises(OptimlError, match="other settings"):
        run_eval(model, ByteTokenizer(), _suite()[:1], SETTINGS, tmp_path, {"seed": 1},
                 show_progress=False)


def test_long_prompts_are_cut_from_the_left(model, monkeypatch):
    """64 positions, 8 new tokens: </s> and the last 55 source bytes, the query among them."""
    from optiml_engine.eval import harness

    long = _task("taskL", "cat", 2)
    long.definition = "x" * 500  # far beyond the tiny model's 64 positions
    fed = []

    def recording_generate(model, prompts, *args, **kwargs):
        fed.extend(prompts)
        return greedy_generate(model, prompts, *args, **kwargs)

    monkeypatch.setattr(harness, "greedy_generate", recording_generate)
    tok = ByteTokenizer()
    recs = evaluate_task(model, tok, EvalTask(long, "heldout_task", long.instances),
                         0, EvalSettings(max_new_tokens=8))
    assert [r["kind"] for r in recs] == ["generate", "generate"]
    sources = [render(long, inst, shots=0, seed=0, pool=None)[0] for inst in long.instances]
    assert [len(tok.encode(s)) for s in sources] == [532, 532]
    assert fed == [[tok.eos_id, *tok.encode(s)[-55:]] for s in sources]
    assert [tok.decode(ids) for ids in fed] == [
        "x" * 35 + f"\n\nInput: q{i}L\nOutput:" for i in range(2)]
    assert [r["prediction"] for r in recs] == [
        tok.decode(out).strip() for out in greedy_generate(model, fed, 8, tok.eos_id, tok.pad_id,
                                                            vocab_limit=tok.vocab_size)]


def test_options_longer_than_the_positions_are_cut_to_fit(model):
    """Options of 100 bytes against 64 positions: each keeps its first 32 tokens, the prompt the
    other half, and the option that differs first wins, as scoring the cut options would say."""
    from optiml_engine.eval.harness import _fit_options, _prompt_ids
    from optiml_engine.eval.scoring import score_options

    options = ["a" * 99 + "b", "c" * 100]
    task = _task("taskO", "cat", 2, options=options)
    tok = ByteTokenizer()
    recs = evaluate_task(model, tok, EvalTask(task, "heldout_category", task.instances), 0,
                         EvalSettings())
    assert [r["kind"] for r in recs] == ["rank", "rank"]
    source, _ = render(task, task.instances[0], shots=0, seed=0, pool=None)
    cut = _fit_options([tok.encode(" " + o) for o in options], len(tok.encode(source)) + 1, 64)
    assert cut == [tok.encode(" " + "a" * 31), tok.encode(" " + "c" * 31)]  # the first 32 each
    want = score_options(model, [_prompt_ids(tok, source, 32)], [cut], tok.pad_id)[0]
    assert recs[0]["log_likelihoods"] == pytest.approx(want.log_likelihoods, rel=1e-6)
    assert _fit_options([[1] * 10], 20, 64) == [[1] * 10]  # fits: untouched


def test_synthetic_layout_levels_are_disjoint():
    suite = synthetic_suite(0, 10)
    by_level = {}
    for et in suite:
        by_level.setdefault(et.level, []).append(et)
    cats = {lv: {et.task.category for et in ets} for lv, ets in by_level.items()}
    assert not cats["heldout_category"] & (cats["heldout_task"] | cats["heldout_instance"])
    assert cats["heldout_task"] <= cats["heldout_instance"]
    for et in by_level["heldout_instance"]:
        ids = {i.id for i in et.instances}
        assert ids and not ids & {i.id for i in et.demo_pool}
    small = subset(suite, 1, 2)
    assert len(small) == 3 and all(len(et.instances) == 2 for et in small)


@pytest.mark.slow
def test_main_writes_report_from_hf_dir(tiny_hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny_hf_dir), "--bench", "synthetic", "--shots", "0,1",
            "--out", str(out), "--max-instances", "2", "--max-new-tokens", "3",
            "--levels", "heldout_category"]
    assert main([*argv, "--baseline", "init"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert len(data["instances"]) == 2 * 10 * 2  # 2 shots x 10 tasks x 2 instances
    assert set(data["summary"]) == {"0", "1"}
    assert (out / "levels.png").is_file() and "held-out categories" in capsys.readouterr().out
    assert (out / "baseline" / "results.json").is_file()
    assert "| level | baseline 0-shot | baseline 1-shot | model 0-shot | model 1-shot |" in (
        out / "report.md").read_text()
    with pytest.raises(OptimlError):
        main(argv[:5] + ["0,x"] + argv[6:])


def test_training_evaluator_logs_scalars_and_history(model, tmp_path):
    from optiml_engine.config import EvalConfig
    from optiml_engine.eval.harness import TrainingEvaluator

    # the engine's protocol: the synthetic (Super-NI) label tasks ranked, as these numbers say
    cfg = EvalConfig(interval=10, bench="synthetic", shots=[0], max_new_tokens=3,
                     subset_tasks=1, subset_instances=2, protocol="engine")
    evaluator = TrainingEvaluator(cfg, ByteTokenizer(), tmp_path / "h.jsonl")
    model.train()
    scalars = evaluator(model, step=10)
    assert model.training  # mode restored
    model.eval()
    # One task per level (the stratified order starts with a rank-classification task), two
    # instances each: the random model picks the right option of both contains_letter instances
    # (held-out category: 100), one of two above_fifty (held-out task: 50) and neither is_even
    # (held-out instances: 0); the benchmark score is the mean of its three task scores.
    assert scalars == {"eval/subset/level/heldout_category/0shot": 100.0,
                       "eval/subset/level/heldout_task/0shot": 50.0,
                       "eval/subset/level/heldout_instance/0shot": 0.0,
                       "eval/subset/benchmark/superni/0shot": 50.0}
    assert [et.name for et in evaluator.suite] == ["task5066_synthetic_contains_letter",
                                                   "task5051_synthetic_is_even",
                                                   "task5055_synthetic_above_fifty"]
    evaluator(model, step=20)
    rows = [json.loads(x) for x in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20] and rows[0] == {"step": 10, **scalars}


def test_load_model_from_engine_checkpoint(tiny_models, tmp_path):
    import torch

    from optiml_engine.distributed.checkpoint import save_weights
    from optiml_engine.eval.harness import load_model

    ours, _ = tiny_models
    save_weights(tmp_path / "step_0000005", ours,
                 {"step": 5, "recipe": {"data": {"tokenizer": "byte"}}})
    loaded, spec = load_model(str(tmp_path))  # a checkpoint.dir: its latest step
    assert spec == "byte"
    ids = torch.tensor([[2, 40, 41, 42]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), ours(ids))
    with pytest.raises(OptimlError, match="not found"):
        load_model(str(tmp_path / "nothing"))


def test_eval_manifest_reads_task_files_ids_and_levels(tmp_path):
    from optiml_engine.eval.harness import _task_languages_xlingual
    from optiml_engine.eval.suite import load_suite

    task = {"Contributors": [], "Source": ["toy"], "URL": [], "Categories": ["Misc."],
            "Reasoning": [], "Definition": ["Answer."], "Input_language": ["French"],
            "Output_language": ["French"], "Instruction_language": ["English"], "Domains": [],
            "Positive Examples": [], "Negative Examples": [],
            "Instances": [{"id": f"task9-{i}", "input": f"q{i}", "output": [f"r{i}"]}
                          for i in range(5)],
            "Instance License": ["MIT"]}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "task9_toy.json").write_text(json.dumps(task))
    manifest = {"tasks": [{"path": "tasks/task9_toy.json", "format": "superni",
                           "level": "heldout_instance", "eval_ids": ["task9-3", "task9-4"],
                           "demo_ids": ["task9-0", "task9-1", "task9-2"]}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (et,) = load_suite(str(tmp_path))
    assert et.level == "heldout_instance" and et.name == "task9_toy"
    assert [i.id for i in et.instances] == ["task9-3", "task9-4"]
    assert [i.id for i in et.demo_pool] == ["task9-0", "task9-1", "task9-2"]
    assert _task_languages_xlingual(et.task)  # French: the official xlingual ROUGE-L track
    manifest["tasks"][0]["eval_ids"] = ["task9-77"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OptimlError, match="task9-77"):
        load_suite(str(tmp_path / "manifest.json"))
    with pytest.raises(OptimlError, match="no manifest"):
        load_suite(str(tmp_path / "missing"))


def test_suite_from_a_built_bench(tmp_path):
    import yaml

    from optiml_engine.data.bench import build_bench
    from optiml_engine.eval.suite import load_suite

    cfg = {"name": "t", "seed": 1, "tokenizer": "byte", "max_example_tokens": 400,
           "sources": [{"name": "superni", "format": "synthetic", "instances_per_task": 8}],
           "held_out": {"categories": ["Sorting"], "tasks_per_category": 1, "instances": 0.25}}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(cfg))
    manifest = build_bench(tmp_path / "bench.yaml", tmp_path / "bench")
    split = {t["name"]: t["split"] for t in manifest["tasks"]}
    suite = load_suite(str(tmp_path / "bench"))
    assert {et.level for et in suite} == {"heldout_category", "heldout_task", "heldout_instance"}
    for et in suite:
        want = "heldout_instance" if split[et.name] == "train" else split[et.name]
        assert et.level == want  # each task evaluated only at its own level
        if et.level == "heldout_category":
            assert et.task.category == "Sorting"
        if et.level == "heldout_instance":
            eval_ids = {i.id for i in et.instances}
            assert len(eval_ids) == 2 and not eval_ids & {i.id for i in et.demo_pool}
            assert len(et.demo_pool) == 6
        else:
            assert et.demo_pool is None and len(et.instances) == 8


def test_misspelled_level_lists_the_valid_names(tmp_path, capsys):
    from optiml_engine.cli import main as cli_main

    argv = ["eval", "--checkpoint", str(tmp_path / "none"), "--bench", "synthetic", "--out",
            str(tmp_path / "out"), "--levels", "heldout_category,heldout_tasks"]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err == (
        "optiml: error: --levels heldout_category,heldout_tasks: unknown level 'heldout_tasks' "
        "(did you mean 'heldout_task'? valid: heldout_category, heldout_task, heldout_instance)\n")


def test_eval_help_shows_the_defaults(capsys):
    from optiml_engine.eval.harness import build_parser

    text = " ".join(build_parser().format_help().split())  # argparse wraps at the terminal width
    for fragment in ("for every task (default: 0,5,", "(default: paper)",
                     "instances per task, 0 for all (default: 250,",
                     "greedy decoding budget (default: 256, as OPT-IML)",
                     "prompts per batch (default: 8)", "pipeline stages (default: 1)",
                     "demonstration draws (default: 0)"):
        assert fragment in text


def test_progress_in_a_log_file_is_a_line_per_step():
    import io
    import re

    from optiml_engine.eval.harness import LineProgress

    out = io.StringIO()
    bar = LineProgress(total=40, tasks=2, file=out, step=25)
    for name in ("a 0-shot", "b 0-shot"):
        bar.set_description(name)
        for _ in range(4):
            bar.update(5)
    assert [re.sub(r" \d+ s$", "", line) for line in out.getvalue().split("\n")] == [
        "eval: 12% (5/40 instances, task 1/2: a 0-shot)",
        "eval: 25% (10/40 instances, task 1/2: a 0-shot)",
        "eval: 50% (20/40 instances, task 1/2: a 0-shot)",
        "eval: 75% (30/40 instances, task 2/2: b 0-shot)",
        "eval: 100% (40/40 instances, task 2/2: b 0-shot)",
        ""]


def test_run_eval_writes_no_carriage_returns_to_a_log(model, tmp_path, capsys):
    run_eval(model, ByteTokenizer(), _suite(), SETTINGS, tmp_path)  # stderr: not a terminal
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[-1].startswith("eval: 100% (28/28 instances, task 6/6: taskC 2-shot)")
    assert all(line.startswith("eval: ") for line in lines) and len(lines) == 10  # 10 batches
