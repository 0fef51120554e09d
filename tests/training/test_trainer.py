"""Single-process training: accumulation, packing equivalence, resume, atomic saves, logs."""

import pytest
import torch

from optiml_engine.data.packing import pack_examples
from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.model import OPTForCausalLM
from optiml_engine.training.trainer import Trainer


def test_four_micro_batches_equal_one_batch_of_four(tiny_recipe):
    """One step over 4 micro-batches of 1 sample = one step over 1 micro-batch of 4."""
    results = []
    for micro in (1, 4):
        trainer = Trainer(tiny_recipe(f"train.micro_batch_size={micro}", "train.steps=1"),
                          verbose=False)
        (metrics,) = trainer.fit()
        results.append((metrics, {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    (small, small_w), (big, big_w) = results
    assert small["loss"] == pytest.approx(big["loss"], rel=1e-6)
    assert small["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-5)
    for name, w in big_w.items():  # fp32 sums reorder: relative to the weight's norm
        if name.endswith("qkv_proj.bias"):  # holds the key bias, whose true gradient is 0:
            continue  # Adam turns its round-off into full steps (tests/parallel/harness.py)
        assert float((small_w[name] - w).norm() / w.norm().clamp_min(1e-12)) < 1e-6, name


def test_packed_sample_equals_examples_run_separately():
    torch.manual_seed(0)
    from optiml_engine.config import ModelConfig

    model = OPTForCausalLM(ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                                       max_position_embeddings=64, dropout=0.0))
    examples = [([5, 6, 7], [8, 9]), ([10] * 6, [11, 12, 13]), ([14], [15])]
    packed = pack_examples(examples, 32)
    assert len(packed) == 1
    row = {f: torch.as_tensor(getattr(packed, f)[:1]) for f in
           ("tokens", "labels", "loss_mask", "position_ids", "doc_ids")}
    assert row["position_ids"][0, :7].tolist() == [0, 1, 2, 3, 4, 5, 6]  # restarts per example
    packed_loss = model.loss_sum(row["tokens"], row["position_ids"], row["doc_ids"],
                                 row["labels"], row["loss_mask"].float())
    packed_grads = torch.autograd.grad(packed_loss, list(model.parameters()))

    separate = 0.0
    for src, tgt in examples:
        ids = torch.tensor([[2, *src, *tgt, 2]])
        labels = torch.cat([ids[:, 1:], torch.ones(1, 1, dtype=torch.long)], 1)
        mask = torch.zeros_like(ids, dtype=torch.float)
        mask[0, len(src) : len(src) + len(tgt) + 1] = 1.0  # predicts tgt and the closing </s>
        separate = separate + model.loss_sum(ids, None, None, labels, mask)
    separate_grads = torch.autograd.grad(separate, list(model.parameters()))
    torch.testing.assert_close(packed_loss, separate, rtol=1e-5, atol=1e-6)
    for a, b in zip(packed_grads, separate_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resume_gives_identical_losses(tiny_recipe, tmp_path):
    common = ["model.dropout=0.1", "train.steps=6", f"checkpoint.dir={tmp_path / 'ck'}"]
    straight = Trainer(tiny_recipe(*common, "checkpoint.dir=null"), verbose=False).fit()
    Trainer(tiny_recipe(*common, "train.stop_after=3"), verbose=False).fit()
    resumed = Trainer(tiny_recipe(*common, "checkpoint.load=latest"), verbose=False)
    assert resumed.step == 3
    tail = resumed.fit()
    assert [m["loss"] for m in straight[3:]] == [m["loss"] for m in tail]


def test_failed_save_leaves_previous_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    trainer = Trainer(tiny_recipe(f"checkpoint.dir={tmp_path}", "train.steps=1"), verbose=False)
    trainer.fit()
    first = ckpt.latest_checkpoint(tmp_path)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()

    def die(*args, **kwargs):  # a kill half-way: some files written, never completed
        (tmp_path / ".tmp-step_0000002").mkdir(exist_ok=True)
        (tmp_path / ".tmp-step_0000002" / "__0_0.distcp").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.dcp, "save", die)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    assert ckpt.latest_checkpoint(tmp_path) == first
    fresh = Trainer(tiny_recipe(f"checkpoint.dir={tmp_path}", "checkpoint.load=latest"),
                    verbose=False)
    assert fresh.step == 1
    for k, v in fresh.model.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)


def test_tensorboard_scalars_and_falling_loss(tiny_recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = Trainer(tiny_recipe(f"logging.dir={tmp_path / 'tb'}", "train.steps=30",
                                  "optim.lr=3e-3"), verbose=False).fit()
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 30
    assert losses[0] == pytest.approx(history[0]["loss"], rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/target_tokens_per_s",
            "train/packing_efficiency"} <= set(events.Tags()["scalars"])


def test_in_training_evaluation_is_logged(tiny_recipe, bench_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from optiml_engine.eval.harness import TrainingEvaluator
    from optiml_engine.eval.pipeline_eval import PipelineEvalModel, training_evaluator

    recipe = tiny_recipe("train.steps=2", "eval.interval=2", f"eval.bench={bench_dir}/out",
                         "eval.subset_tasks=1", "eval.subset_instances=2",
                         "eval.max_new_tokens=4", f"logging.dir={tmp_path / 'tb'}")
    trainer = Trainer(recipe, verbose=False, make_evaluator=training_evaluator)
    trainer.fit()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    levels = sorted(t for t in events.Tags()["scalars"] if t.startswith("eval/subset/level/"))
    assert len(levels) == 3  # the three generalization levels, 0-shot
    # The logged scores are those of the model at step 2 (the final one), evaluated directly.
    direct = TrainingEvaluator(recipe.eval, trainer.tokenizer)(
        PipelineEvalModel(trainer.model, trainer.engine.chunks), 2)
    for tag in levels:
        (event,) = events.Scalars(tag)
        assert event.step == 2 and event.value == pytest.approx(direct[tag], abs=1e-4)
    assert (tmp_path / "tb" / "eval_history.jsonl").read_text().count('"step": 2') == 1
