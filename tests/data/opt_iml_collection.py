"""A tiny local copy of OPT-IML Bench's collections, in each benchmark's real on-disk format, laid
out the way `recipes/bench/opt-iml.yaml` expects under $OPTIML_DATA. Every benchmark of the
paper's mixture is present (Super-NI, PromptSource, FLAN, CrossFit, ExMix, T5, UnifiedSKG,
reasoning, pre-training), with task sizes that differ so the EPS weights matter.

Dataset and task names are ones the bench recipe maps (categories, instructions); the text is
made up (never a copy of the held-out data) and no two examples share a 13-gram."""

from __future__ import annotations

import json
from pathlib import Path

from tests.data.test_bench_paper_rules import sentence, split_files, superni_task


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


PS_TEMPLATES = """dataset: {dataset}
subset: null
templates:
  b1000000-0000-4000-8000-000000000001: !Template
    answer_choices: bad ||| good
    id: b1000000-0000-4000-8000-000000000001
    jinja: '{{{{text}}}} Is this good or bad? ||| {{{{ answer_choices[label] }}}}'
    metadata: !TemplateMetadata
      choices_in_prompt: true
      languages: [en]
      metrics: [Accuracy]
      original_task: true
    name: good or bad
    reference: ''
  b1000000-0000-4000-8000-000000000002: !Template
    answer_choices: bad ||| good
    id: b1000000-0000-4000-8000-000000000002
    jinja: 'Text: {{{{text}}}} Verdict? ||| {{{{ answer_choices[label] }}}}'
    metadata: !TemplateMetadata
      choices_in_prompt: false
      languages: [en]
      metrics: [Accuracy]
      original_task: true
    name: verdict
    reference: ''
  b1000000-0000-4000-8000-000000000003: !Template
    answer_choices: bad ||| good
    id: b1000000-0000-4000-8000-000000000003
    jinja: '{{{{text}}}} How was it? ||| {{{{ answer_choices[label] }}}}'
    metadata: !TemplateMetadata
      choices_in_prompt: false
      languages: [en]
      metrics: [Accuracy]
      original_task: true
    name: how was it
    reference: ''
"""


def write_collection(root: Path, scale: int = 1) -> Path:
    """Write the collections under `root` (the $OPTIML_DATA of the bench recipe); `scale`
    multiplies every task's size."""
    n = lambda k: k * scale  # noqa: E731
    ni = root / "natural-instructions"
    # Super-NI task files carry no split: the bench holds out 100 random instances of each
    superni_task(ni, "task9001_toy_answer_generation", "Question Answering", "toyni1",
                 [sentence(i, salt="na") for i in range(n(130))])
    superni_task(ni, "task9002_toy_sentiment", "Sentiment Analysis", "toyni2",
                 [sentence(i, salt="nb") for i in range(n(112))])
    split_files(ni, train=["task9001_toy_answer_generation", "task9002_toy_sentiment"], test=[],
                excluded=[])
    for dataset, size in (("imdb", 40), ("ag_news", 16)):
        where = root / "promptsource" / dataset
        where.mkdir(parents=True, exist_ok=True)
        (where / "templates.yaml").write_text(PS_TEMPLATES.format(dataset=dataset))
        _jsonl(where / "train.jsonl", [{"text": sentence(i, salt=f"p{dataset}"), "label": i % 2}
                                       for i in range(n(size))])
    flan = root / "flan"
    flan.mkdir(parents=True, exist_ok=True)
    (flan / "templates.json").write_text(json.dumps({
        "sst2": [["{sentence} Positive or negative? {options_}", "{answer}"],
                 ["Sentence: {sentence} Sentiment? {options_}", "{answer}"]],
        "squad_v1": [["{context} Q: {question}", "{answer}"]]}))
    labels = ["negative", "positive"]
    _jsonl(flan / "sst2" / "train.jsonl",
           [{"sentence": sentence(i, salt="fs"), "options": labels, "answer": labels[i % 2]}
            for i in range(n(20))])
    _jsonl(flan / "squad_v1" / "train.jsonl",
           [{"context": sentence(i, salt="fq"), "question": "what?", "answer": f"ans{i}"}
            for i in range(n(10))])
    for bench, tasks in (("crossfit", [("acronym_identification", "Named Entity Recognition", 10),
                                       ("emo", "Sentiment Analysis", 6)]),
                         ("exmix", [("gpt2_deepfake_detection", "Text Categorization", 8)]),
                         ("t5", [("c4_span_corruption", "Fill in The Blank", 8)]),
                         ("unifiedskg", [("wikitq", "Question Answering", 8),
                                         ("totto", "Data to Text", 5)])):
        for task, category, size in tasks:
            _jsonl(root / bench / f"{task}.jsonl",
                   [{"src": sentence(i, salt=f"{bench}{task}"), "tgt": f"t{i}", "task": task,
                     "category": category, "split": "validation" if i < 2 else "train"}
                    for i in range(n(size))])
    _jsonl(root / "reasoning" / "toy_math_cot.jsonl",
           [{"question": sentence(i, salt="rq"), "rationale": f"step {i} then step {i + 1}.",
             "answer": str(i), "split": "train"} for i in range(n(12))])
    _jsonl(root / "pretraining" / "last_shard.jsonl",
           [{"text": sentence(i, words=30, salt="pt")} for i in range(n(10))])
    return root
