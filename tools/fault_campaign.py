"""The fault campaign: a user's bad day, as a repeatable script.

Each case runs real `optiml train` processes on a tiny model (synthetic data, dropout 0.1,
a checkpoint every step) and compares what happened with what must happen:

  kill-1p      kill -9 at random moments of a one-process run (some inside saves), resume with
               checkpoint.load=latest until it finishes: final weights equal the uninterrupted
               run's, bit for bit
  kill-pp2     the same under torchrun, two processes, pipeline-parallel 2
  corrupt-*    a flipped / truncated / garbage file in the newest checkpoint: `latest` passes
               over it to the previous one (same final weights); naming it explicitly: exit 2
  concurrent   a second live run on the same checkpoint.dir: exit 2, the first one unharmed
  bad-input    a misspelled key, a NaN learning rate, a missing bench: exit 2, one line
  diverged     lr 1e6: exit 1, one line, no checkpoint holds a non-finite value

    python tools/fault_campaign.py [--kills 8] [--quick] [--out DIR]

prints a table of case / expected / observed and exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """
model: {vocab_size: 264, hidden_size: 64, num_layers: 4, num_heads: 4, ffn_hidden_size: 128,
        max_position_embeddings: 128, dropout: 0.1, attention_dropout: 0.1}
data: {synthetic: true, synthetic_examples: 256, tokenizer: byte, seq_length: 128}
optim: {lr: 1.0e-3, warmup_steps: 2}
train: {steps: %(steps)d, seed: 11, micro_batch_size: 2, global_batch_size: 4}
checkpoint: {interval: 1, keep_last: 2}
logging: {interval: 100}
"""


def optiml(args: list[str], procs: int = 1) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "optiml_engine", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={procs}", "-m", "optiml_engine", *args]


def run(cmd: list[str], kill_when=None) -> tuple[int | None, str]:
    """(exit code, or None if `kill_when()` said so first and the run was killed -9; stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env,
                             start_new_session=True)
        while p.poll() is None:
            if kill_when is not None and kill_when():
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return None, ""
            time.sleep(0.005)
        err.seek(0)
        return p.returncode, err.read()


def final_weights(ck: Path, step: int) -> dict:
    from optiml_engine.config import ModelConfig
    from optiml_engine.distributed import checkpoint as ckpt
    from optiml_engine.model import OPTForCausalLM

    path = ck / f"step_{step:07d}"
    model = OPTForCausalLM(ModelConfig(**ckpt.read_meta(path)["model_config"]))
    ckpt.load_weights(model, path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Campaign:
    def __init__(self, root: Path, steps: int, seed: int):
        self.root, self.steps, self.rng = root, steps, random.Random(seed)
        self.recipe = root / "tiny.yaml"
        self.recipe.write_text(RECIPE % {"steps": steps})
        self.rows: list[tuple[str, str, str, bool]] = []

    def train(self, ck: Path, *extra: str, procs: int = 1, kill_when=None):
        layout = ["parallel.pp=2"] if procs == 2 else []
        return run(optiml(["train", str(self.recipe), f"checkpoint.dir={ck}", *layout,
                           *extra], procs), kill_when)

    def killer(self, ck: Path, in_save: bool):
        """When to kill: as soon as a save is under way, or at a random moment of the steps
        (after the next checkpoint appears, within about one step)."""
        if in_save:
            return lambda: any(ck.glob(".tmp-*"))
        seen = {p.name for p in ck.glob("step_*")}
        state = {"at": None}

        def now() -> bool:
            if state["at"] is None and {p.name for p in ck.glob("step_*")} - seen:
                state["at"] = time.time() + self.rng.uniform(0.0, 1.0)
            return state["at"] is not None and time.time() >= state["at"]
        return now

    def record(self, case: str, expected: str, observed: str, ok: bool) -> None:
        self.rows.append((case, expected, observed, ok))
        print(f"{'ok ' if ok else 'BAD'} {case:<22} {observed}", flush=True)

    def reference(self, procs: int) -> tuple[Path, dict]:
        ck = self.root / f"ref-{procs}"
        code, err = self.train(ck, procs=procs)
        assert code == 0, err
        return ck, final_weights(ck, self.steps)

    def kills(self, name: str, procs: int, kills: int) -> None:
        _, want = self.reference(procs)
        ck = self.root / name
        inside, done = 0, 0
        while done < kills:
            in_save = done % 2 == 0
            code, err = self.train(ck, "checkpoint.load=latest", procs=procs,
                                   kill_when=self.killer(ck, in_save))
            if code is None:
                done += 1
                inside += in_save
            elif code != 0:
                self.record(name, "resumes", f"exit {code}: {err.strip()[-200:]}", False)
                return
            else:  # finished before the kill: start over for the next one
                shutil.rmtree(ck)
        code, err = self.train(ck, "checkpoint.load=latest", procs=procs)
        ok = code == 0 and same(final_weights(ck, self.steps), want)
        self.record(name, "final weights bit-identical",
                    f"{kills} kills ({inside} inside saves), exit {code}, "
                    f"{'identical' if ok else 'DIFFERENT'}", ok)

    def corruptions(self) -> None:
        ref, want = self.reference(1)
        newest = f"step_{self.steps:07d}"
        cases = {"flipped-distcp": ("__0_0.distcp", "flip"), "truncated-metadata":
                 (".metadata", "truncate"), "garbage-meta": ("meta.json", "garbage"),
                 "garbage-rng": ("rng/rank0.pt", "garbage")}
        for case, (name, how) in cases.items():
            ck = self.root / f"corrupt-{case}"
            shutil.copytree(ref, ck)
            target = ck / newest / name
            data = bytearray(target.read_bytes())
            if how == "flip":
                for i in range(64):
                    data[(i * 7919) % len(data)] ^= 0xFF
            elif how == "truncate":
                data = data[: len(data) // 2]
            else:
                data = bytearray(b"\x00garbage\xff" * 4)
            target.write_bytes(bytes(data))
            code, err = self.train(ck, f"checkpoint.load={ck / newest}")
            one_line = code == 2 and "Traceback" not in err
            # `latest` goes back one step, trains it again and ends where the reference did.
            code2, err2 = self.train(ck, "checkpoint.load=latest")
            ok = one_line and code2 == 0 and "skipping checkpoint" in err2 and same(
                final_weights(ck, self.steps), want)
            self.record(f"corrupt-{case}", "explicit: exit 2; latest: previous, same end",
                        f"explicit exit {code}, latest exit {code2}", ok)

    def concurrent(self) -> None:
        ck = self.root / "concurrent"
        long = ["train.steps=400"]
        first = subprocess.Popen(optiml(["train", str(self.recipe), f"checkpoint.dir={ck}",
                                         *long]), stderr=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, start_new_session=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 60
        while not (ck / ".lock").exists() and time.time() < deadline:
            time.sleep(0.1)
        code, err = self.train(ck, *long)
        alive = first.poll() is None
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        ok = code == 2 and "another run holds it" in err and alive
        self.record("concurrent", "second run: exit 2; first unharmed",
                    f"exit {code}, first {'alive' if alive else 'dead'}", ok)

    def bad_inputs(self) -> None:
        cases = {"misspelled-key": ["optim.lrr=1"], "nan-lr": ["optim.lr=.nan"],
                 "missing-bench": ["data.synthetic=false", "data.bench=/nonexistent"]}
        for case, extra in cases.items():
            code, err = self.train(self.root / f"bad-{case}", *extra)
            lines = [x for x in err.strip().splitlines() if x.startswith("optiml: error:")]
            ok = code == 2 and len(lines) == 1 and "Traceback" not in err
            self.record(f"bad-input-{case}", "exit 2, one line", f"exit {code}: "
                        f"{(lines or [err.strip()[-120:]])[0][:90]}", ok)

    def diverged(self, procs: int) -> None:
        import torch

        ck = self.root / f"diverged-{procs}"
        code, err = self.train(ck, "optim.lr=1e6", "optim.warmup_steps=0",
                               "precision.max_skipped_steps=3", "checkpoint.keep_last=50",
                               procs=procs)
        finite = True
        for path in sorted(ck.glob("step_*")):
            weights = final_weights(ck, int(path.name.split("_")[1]))
            finite &= all(bool(torch.isfinite(v).all()) for v in weights.values())
        ok = code == 1 and "consecutive steps had inf/NaN" in err and finite
        self.record(f"diverged-{procs}p", "exit 1, no non-finite checkpoint",
                    f"exit {code}, {len(list(ck.glob('step_*')))} checkpoints, "
                    f"{'all finite' if finite else 'NON-FINITE'}", ok)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8, help="kill -9 per layout")
    parser.add_argument("--quick", action="store_true", help="2 kills per layout, fewer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="fault-campaign-"))
    root.mkdir(parents=True, exist_ok=True)
    kills = 2 if args.quick else args.kills
    c = Campaign(root, steps=6 if args.quick else 12, seed=args.seed)
    start = time.time()
    c.kills("kill-1p", 1, kills)
    c.kills("kill-pp2", 2, kills)
    c.corruptions()
    c.concurrent()
    c.bad_inputs()
    c.diverged(1)
    c.diverged(2)
    failed = [r for r in c.rows if not r[3]]
    print("\n| case | expected | observed |\n|---|---|---|")
    for case, expected, observed, ok in c.rows:
        print(f"| {case} | {expected} | {observed}{'' if ok else ' **FAILED**'} |")
    print(f"\n{len(c.rows) - len(failed)}/{len(c.rows)} cases as expected in "
          f"{time.time() - start:.0f} s ({root})")
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
