import json
import random

import pytest
import yaml

from optiml_engine.config import load_recipe
from optiml_engine.data.bench import build_bench


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


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory):
    """A small synthetic bench (28 tasks x 30 instances), built once per test session."""
    tmp = tmp_path_factory.mktemp("mix")
    cfg = {
        "name": "m",
        "seed": 0,
        "tokenizer": "byte",
        "sources": [
            {"name": "superni", "format": "synthetic", "instances_per_task": 30, "num_tasks": 28}
        ],
        "held_out": {
            "categories": ["Counting"],
            "tasks_per_category": 1,
            "instances": 0.2,
        },
    }
    (tmp / "b.yaml").write_text(yaml.safe_dump(cfg))
    build_bench(tmp / "b.yaml", tmp / "out")
    return tmp


@pytest.fixture(autouse=True)
def _grid_does_not_outlive_its_test():
    """A Trainer that a test never fits or closes keeps its grid: forget it after the test, so
    the next test starts from no grid as a fresh process would."""
    yield
    from optiml_engine.distributed import state

    if state.is_initialized():
        state.destroy(keep_process_group=True)
