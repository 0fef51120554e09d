"""train/tflops_per_gpu, train/mfu and train/tokens_per_s from the trainer (model/flops.py)."""

import pytest

from optiml_engine.training.trainer import Trainer


def _hand_flops(cfg, micro_batches, pad_id=1):
    """The needed FLOPs of the batches, counted with plain loops (docs/bench/train.md)."""
    h, f, layers = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_layers
    total = 0.0
    for b in micro_batches:
        for tokens, docs, mask in zip(b["tokens"].tolist(), b["doc_ids"].tolist(),
                                      b["loss_mask"].tolist(), strict=True):
            lengths: dict[int, int] = {}
            for t, d in zip(tokens, docs, strict=True):
                if t != pad_id:
                    lengths[d] = lengths.get(d, 0) + 1
            real = sum(lengths.values())
            pairs = sum(n * (n + 1) // 2 for n in lengths.values())
            targets = sum(1 for m in mask if m > 0)
            total += (6 * layers * (4 * h * h + 2 * h * f) * real
                      + 6 * cfg.word_embed_proj_dim * cfg.vocab_size * targets
                      + 12 * layers * h * pairs)
    return total


def test_logged_flops_are_the_steps_needed_flops(tiny_recipe, capsys):
    trainer = Trainer(tiny_recipe("logging.peak_tflops=0.5"), verbose=False)
    seen = []
    next_step = trainer.loader.next_step
    trainer.loader.next_step = lambda: seen.append(next_step()) or seen[-1]
    try:
        m = trainer.train_step()
    finally:
        trainer.close()
    capacity = sum(b["tokens"].numel() for b in seen[0])
    # both rates share the step's seconds: their ratio is FLOPs per token of the step
    flops = m["tflops_per_gpu"] * 1e12 / m["tokens_per_s"] * capacity
    assert flops == pytest.approx(_hand_flops(trainer.engine.config, seen[0]), rel=1e-9)
    assert m["mfu"] == pytest.approx(m["tflops_per_gpu"] / 0.5, rel=1e-12)
    assert m["tokens_per_s"] == pytest.approx(
        m["target_tokens_per_s"] * capacity / m["target_tokens"], rel=1e-9)


def test_cpu_without_a_peak_logs_no_mfu_and_says_so_once(tiny_recipe, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = Trainer(tiny_recipe(f"logging.dir={tmp_path / 'tb'}", "train.steps=2"))
    assert trainer.peak_flops is None
    history = trainer.fit()
    said = capsys.readouterr().err
    assert said.count("train/mfu not logged") == 1 and "logging.peak_tflops" in said
    assert all("mfu" not in m and m["tflops_per_gpu"] > 0 for m in history)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train/tflops_per_gpu", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    assert "train/mfu" not in events.Tags()["scalars"]


def test_peak_table_keys():
    from optiml_engine.model.flops import PEAK_TFLOPS, device_peak_key

    assert device_peak_key("NVIDIA A100-SXM4-40GB", 39.4) == "a100-40gb"
    assert device_peak_key("NVIDIA A100-SXM4-80GB", 79.2) == "a100-80gb"
    assert device_peak_key("NVIDIA H100 80GB HBM3", 79.6) == "h100"
    assert device_peak_key("NVIDIA H200", 139.8) == "h200"
    assert device_peak_key("cpu") == "cpu" and PEAK_TFLOPS["cpu"] is None
    assert device_peak_key("Tesla V100") is None
    assert PEAK_TFLOPS["a100-40gb"] == 312.0
