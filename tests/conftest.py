import json
import random

import pytest

from optiml_engine.config import load_recipe


def write_src_tgt(path, n: int, seed: int = 0):
    """Random instruction-like records whose targets are a function of the source."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 12)))
            f.write(
                json.dumps({"src": f"Reverse: {word}\nAnswer:", "tgt": f" {word[::-1]}"}) + "\n"
            )
    return path


@pytest.fixture
def tiny_recipe(tmp_path):
    """A factory of tiny recipes over a random JSONL file; overrides as key=value strings."""
    data = write_src_tgt(tmp_path / "train.jsonl", 64)

    def make(*overrides):
        base = [
            "model.vocab_size=264",
            "model.hidden_size=32",
            "model.num_layers=2",
            "model.num_heads=4",
            "model.max_position_embeddings=128",
            "model.dropout=0.0",
            f"data.train_path={data}",
            "data.seq_length=64",
            "train.steps=4",
            "train.micro_batch_size=2",
            "train.global_batch_size=4",
            "optim.lr=1e-3",
            "optim.warmup_steps=1",
            "logging.interval=1",
        ]
        return load_recipe(None, base + list(overrides))

    return make
