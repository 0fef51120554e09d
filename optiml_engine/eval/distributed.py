"""`optiml eval` under torchrun: each rank holds only its part of a --tp x --pp layout.

Every rank builds its tensor-parallel slices and pipeline stage on the meta device and fills
them from the checkpoint (model/meta_init.py): an HF directory's slices are read straight from
disk, an engine checkpoint saved under any layout (or by one process) is resharded on load by
DCP (distributed/checkpoint.load_weights). The model is then wrapped in `PipelineEvalModel`, so the
harness's single-process code (`run_eval`, greedy decoding, rank classification) runs unchanged;
`DistributedEval` is the `ranks` object that shares the work out:

- rank 0 decides (refuses another run's directory, lists the pairs already done) and every
  rank gets its answer, or its OptimlError;
- the data-parallel replicas (world / (tp x pp) of them) split the pending (task, shots)
  pairs round-robin; the first rank of each replica writes its pairs' task files;
- rank 0 gathers every replica's records, writes results.json / report.md and prints.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from optiml_engine.distributed import state
from optiml_engine.errors import OptimlError
from optiml_engine.eval.harness import checkpoint_source
from optiml_engine.eval.pipeline_eval import PipelineEvalModel


def launched() -> bool:
    """Under torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _layout(tp: int | None, pp: int | None, world: int) -> tuple[int, int]:
    pp = pp or 1
    tp = tp or max(world // pp, 1)
    if tp < 1 or pp < 1 or world % (tp * pp):
        raise OptimlError(f"optiml eval --tp {tp} --pp {pp}",
                          f"tp x pp = {tp * pp} does not divide the {world} processes",
                          "launch a multiple of tp*pp processes (torchrun --nproc_per_node), "
                          "or change --tp/--pp")
    return tp, pp


class DistributedEval:
    """The process grid of one evaluation, and what `run_eval` asks of it (see module doc)."""

    shows_progress = False

    def __init__(self, tp: int | None, pp: int | None, device: str):
        tp, pp = _layout(tp, pp, int(os.environ["WORLD_SIZE"]))
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        self.device = device
        self.had_group = dist.is_initialized()  # a caller's process group outlives us
        state.initialize(tp, pp, backend="auto" if device.startswith("cuda") else "gloo")
        g = self.grid = state.grid()
        self.is_main = self.shows_progress = g.rank == 0
        self.writer = g.tp_rank == 0 and g.pp_rank == 0  # the first rank of each replica

    def close(self) -> None:
        state.destroy(keep_process_group=self.had_group)

    # -- this rank's part of a model -------------------------------------------------------------

    def load_model(self, path: str, device: str | None = None, verify: bool = True):
        """(PipelineEvalModel of this rank's part, tokenizer spec) from an HF directory or an
        engine checkpoint."""
        from optiml_engine.config import ModelConfig
        from optiml_engine.distributed import checkpoint as ckpt
        from optiml_engine.model.meta_init import EmptyInit, hf_meta_model, meta_model

        kind, where, spec = checkpoint_source(path)
        if kind == "hf":
            model, source = hf_meta_model(where, dropout=0.0)
            return self._local(model, source, path), spec
        config = ModelConfig(**ckpt.read_meta(where)["model_config"])
        stage = self._local(meta_model(config, seed=0), EmptyInit(), path)
        ckpt.load_weights(stage.model, where, verify)
        return stage, spec

    def init_model(self, config, seed: int, device: str | None = None):
        """The same architecture untrained: the weights one process draws after
        `torch.manual_seed(seed)`, each rank keeping its part."""
        from optiml_engine.model.meta_init import RandomInit, meta_model

        model = meta_model(config, seed)
        return self._local(model, RandomInit(model.init_seed, model.config.init_std), "init")

    def _local(self, model, source, where: str) -> PipelineEvalModel:
        from optiml_engine.model.meta_init import shard_model
        from optiml_engine.model.parallelize import check_divisible

        g, cfg = self.grid, model.config
        check_divisible(cfg, g.tp, f"optiml eval --checkpoint {where} --tp {g.tp}")
        if cfg.num_layers < g.pp:
            raise OptimlError(f"optiml eval --checkpoint {where} --pp {g.pp}",
                              f"{g.pp} pipeline stages for {cfg.num_layers} layers",
                              "use at most one stage per layer")
        chunks, _ = shard_model(model, g, state.tp_group(), False, source, self.device)
        return PipelineEvalModel(model.eval(), chunks)

    # -- what run_eval asks ----------------------------------------------------------------------

    def agree(self, decide):
        """`decide()` on rank 0; every rank returns its answer or raises its OptimlError."""
        answer = [None]
        if self.is_main:
            try:
                answer[0] = ("ok", decide())
            except OptimlError as e:
                answer[0] = ("error", (e.where, e.what, e.fix))
        dist.broadcast_object_list(answer, src=0, group=state.world_group())
        status, value = answer[0]
        if status == "error":
            raise OptimlError(*value)
        return value

    def mine(self, pending: list[int]) -> list[int]:
        """This data-parallel replica's share of the pending pairs (round-robin)."""
        return pending[self.grid.dp_rank::self.grid.dp]

    def collect(self, finished: dict[int, list]) -> dict[int, list] | None:
        """Every replica's finished pairs on rank 0 (None on the other ranks)."""
        mine = finished if self.writer else {}
        gathered = [None] * self.grid.world_size if self.is_main else None
        dist.gather_object(mine, gathered, dst=0, group=state.world_group())
        if not self.is_main:
            return None
        return {i: records for part in gathered for i, records in part.items()}
