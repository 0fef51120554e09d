"""How long a checkpoint save holds up training, synchronous against checkpoint.async_save.

One process, synthetic data, a model of the given width and depth: one step, then a save
timed on the training thread (`save()` returning), the steps trained while a background write is
under way, and the wait that finishes it. Each mode runs `--repeat` times, alternating.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from optiml_engine.config import load_recipe
from optiml_engine.training.trainer import Trainer


def one_save(directory: Path, hidden: int, layers: int, background: bool) -> dict:
    recipe = load_recipe(None, [
        "model.vocab_size=264", f"model.hidden_size={hidden}", f"model.num_layers={layers}",
        "model.num_heads=8", "model.max_position_embeddings=64", "data.synthetic=true",
        "data.tokenizer=byte", "data.seq_length=64", "train.steps=1000",
        "train.micro_batch_size=2", "train.global_batch_size=2", "logging.interval=1000",
        f"checkpoint.dir={directory}", f"checkpoint.async_save={str(background).lower()}"])
    trainer = Trainer(recipe, verbose=False)
    try:
        trainer.train_step()
        start = time.perf_counter()
        trainer.save()
        returned = time.perf_counter()
        steps = 0
        while trainer.pending_save is not None and not trainer.pending_save.done():
            trainer.train_step()
            steps += 1
        written = time.perf_counter()
        trainer.wait_for_save()
        return {"blocked_s": returned - start, "steps_meanwhile": steps,
                "wait_s": time.perf_counter() - written,
                "parameters_m": trainer.engine.num_parameters() / 1e6}
    finally:
        trainer.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for background in (False, True):
                r = one_save(Path(tmp) / f"{background}{i}", args.hidden, args.layers, background)
                print(f"async_save={str(background).lower():5} {r['parameters_m']:.1f}M "
                      f"parameters: save() held training {r['blocked_s']:.2f} s, "
                      f"{r['steps_meanwhile']} steps trained during the write, "
                      f"finishing wait {r['wait_s']:.2f} s")
    return 0
