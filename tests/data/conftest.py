import pytest
import yaml

from optiml_engine.data.bench import build_bench


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory):
    """A small synthetic bench (28 tasks x 30 instances), built once per test session."""
    tmp = tmp_path_factory.mktemp("mix")
    cfg = {"name": "m", "seed": 0, "tokenizer": "byte",
           "sources": [{"name": "superni", "format": "synthetic", "instances_per_task": 30,
                        "num_tasks": 28}],
           "held_out": {"categories": ["Sentiment Analysis"], "tasks_per_category": 1,
                        "instances": 0.2}}
    (tmp / "b.yaml").write_text(yaml.safe_dump(cfg))
    build_bench(tmp / "b.yaml", tmp / "out")
    return tmp
