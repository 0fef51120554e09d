"""Evaluation under the training layout: tensor x pipeline parallel (and data parallel).

`PipelineEvalModel` wraps this rank's part of a model (its tensor-parallel slices and pipeline
stage, as the training engine leaves it) so that the single-process code paths
(`greedy_generate`, `score_options`, the harness) run unchanged on every rank of a replica:

- `hidden_states` runs this stage's part through the model's own forward
  (`OPTForCausalLM.hidden_states`) with this rank's own KV cache. The first stage
  embeds; the others receive [B, S_step, hidden] from the previous stage (every rank knows the
  shape from the same prompts) and send theirs on. The last stage returns the final hidden
  states; the other stages return an empty [B, S, 0] placeholder (they hold no output layer).
- `greedy_tokens` / `token_log_probs` run on the last stage (vocab-parallel under TP: logits are
  never gathered) and are broadcast over the pipeline group, so every rank returns the same
  tokens, drops the same finished rows from its cache, and returns the same scores.

With interleaved stages (virtual chunks) a rank runs its chunks in turn: the activation goes
stage 0 chunk 0 -> ... -> stage pp-1 chunk 0 -> stage 0 chunk 1 -> ... With sequence parallelism
the layers are switched to full-sequence mode while evaluating (a decode step has one token).

`training_evaluator` builds what the trainer is handed (it never imports eval): the recipe's
`TrainingEvaluator` run by data-parallel replica 0 (all its ranks take part), the other
replicas skip and return no scalars.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn

from optiml_engine.distributed import state
from optiml_engine.eval import batching
from optiml_engine.model.opt import default_position_ids
from optiml_engine.model.parallelize import decoder_layers


@contextlib.contextmanager
def _without_sequence_parallel(model):
    """Full-sequence activations inside the TP group while evaluating, restored afterwards."""
    switched = [m for m in model.modules() if getattr(m, "sequence_parallel", False) is True]
    for m in switched:
        m.sequence_parallel = False
    try:
        yield
    finally:
        for m in switched:
            m.sequence_parallel = True


class PipelineEvalModel:
    """This rank's stage of a model, evaluated as if it were the whole model (see module doc)."""

    def __init__(self, model, chunks: list[list[nn.Module]] | None = None):
        self.model = model
        self.config = model.config
        self.chunks = chunks if chunks is not None else [decoder_layers(model)]
        g = state.grid()
        self.stage, self.pp, self.ranks = g.pp_rank, g.pp, state.pp_ranks()
        self.first, self.last = self.stage == 0, self.stage == self.pp - 1
        self.dtype = next(model.parameters()).dtype

    # -- what the harness asks of a model ------------------------------------------------------

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def parameters(self):
        return self.model.parameters()

    # -- the forward through the pipeline ------------------------------------------------------

    @torch.no_grad()
    def hidden_states(self, input_ids, position_ids=None, doc_ids=None, kv_cache=None):
        if position_ids is None:
            position_ids = default_position_ids(input_ids, kv_cache)
        kv_doc_ids = kv_cache.extend_doc_ids(doc_ids) if kv_cache is not None else doc_ids
        batch, seq = input_ids.shape
        shape = (batch, seq, self.config.hidden_size)
        prev = self.ranks[(self.stage - 1) % self.pp]
        nxt = self.ranks[(self.stage + 1) % self.pp]
        last_chunk = len(self.chunks) - 1
        with _without_sequence_parallel(self.model):
            for c, layers in enumerate(self.chunks):
                embed = self.first and c == 0
                head = self.last and c == last_chunk
                if embed:
                    h = input_ids
                else:
                    h = torch.empty(shape, dtype=self.dtype, device=input_ids.device)
                    dist.recv(h, prev)
                h = self.model.hidden_states(h, position_ids, doc_ids, kv_cache, layers=layers,
                                             embed=embed, head=head, kv_doc_ids=kv_doc_ids)
                if not head:
                    dist.send(h.contiguous(), nxt)
            if not self.last:
                return h.new_empty((batch, seq, 0))
            return h

    # -- the output layer on the last stage, its answer broadcast ------------------------------

    def _from_last_stage(self, result: torch.Tensor | None, shape, dtype, device) -> torch.Tensor:
        if self.pp == 1:
            return result
        out = result.contiguous() if self.last else torch.empty(shape, dtype=dtype,
                                                                device=device)
        dist.broadcast(out, self.ranks[-1], group=state.pp_group())
        return out

    @torch.no_grad()
    def greedy_tokens(self, hidden: torch.Tensor, vocab_limit: int | None = None):
        with _without_sequence_parallel(self.model):
            tokens = batching.greedy_tokens(self.model, hidden, vocab_limit) if self.last \
                else None
        return self._from_last_stage(tokens, hidden.shape[:-1], torch.long, hidden.device)

    @torch.no_grad()
    def token_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor):
        with _without_sequence_parallel(self.model):
            lp = batching.token_log_probs(self.model, hidden, targets) if self.last else None
        return self._from_last_stage(lp, targets.shape, torch.float32, hidden.device)


class LayoutEvaluator:
    """`TrainingEvaluator` under the training layout, handed to the trainer: data-parallel
    replica 0 evaluates its stages of the model (every rank of the replica takes part: the
    tokens and scores are broadcast, so its ranks agree), the other replicas return nothing."""

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def __call__(self, model, chunks: list[list[nn.Module]], step: int) -> dict[str, float]:
        if state.dp_rank() != 0:
            return {}
        return self.evaluator(PipelineEvalModel(model, chunks), step)


def training_evaluator(recipe, tokenizer) -> LayoutEvaluator | None:
    """The in-training evaluation of a recipe (a fixed subset of eval.bench every
    eval.interval steps), or None when the recipe asks for none."""
    from pathlib import Path

    from optiml_engine.eval.harness import TrainingEvaluator

    if not (recipe.eval.interval and recipe.eval.bench):
        return None
    history = Path(recipe.logging.dir) / "eval_history.jsonl" if recipe.logging.dir else None
    return LayoutEvaluator(TrainingEvaluator(recipe.eval, tokenizer, history))
