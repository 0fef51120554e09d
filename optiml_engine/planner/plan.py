"""One plan per layout: tp x pp x dp = the GPUs, a way of sharding the state, and what that
costs a rank in memory and the step in time.

Every rank of a layout is looked at through its pipeline stage (tensor-parallel and
data-parallel ranks of a stage hold the same sizes); the plan reports the busiest stage in
memory (first or last: embeddings, loss buffers, most micro-batches in flight). A layout is
skipped when the model or batch cannot be split that way, or when its tensor-parallel group
would leave a node (`gpus_per_node`): TP's collectives run every layer and need NVLink.
"""

from __future__ import annotations

from dataclasses import dataclass

from optiml_engine.planner import activations as act
from optiml_engine.planner.hardware import GPU, USABLE_FRACTION
from optiml_engine.planner.memory import RankMemory, rank_memory
from optiml_engine.planner.params import largest_unit_params, local_params
from optiml_engine.planner.step_time import StepTime, stage_loads, step_time

WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class Plan:
    tp: int
    pp: int
    dp: int
    shard: str
    pp_rank: int  # the stage whose memory is reported (the busiest)
    params_per_gpu: int
    memory: RankMemory
    time: StepTime
    budget_bytes: float
    peak_tflops: float  # the GPU's, in the recipe's dtype (what MFU is against)

    @property
    def peak_gib(self) -> float:
        return self.memory.peak_bytes / 2**30

    @property
    def fits(self) -> bool:
        return self.memory.peak_bytes <= self.budget_bytes


def recipe_shard(recipe) -> str:
    """The recipe's own sharding: `parallel.shard` where the schema has it, else the zero1
    flag."""
    shard = getattr(recipe.parallel, "shard", None)
    if shard is not None:
        return shard
    return "zero1" if recipe.parallel.zero1 else "none"


def activation_shape(recipe, tp: int) -> act.Shape:
    m = recipe.model
    return act.Shape(recipe.data.seq_length, recipe.train.micro_batch_size, m.hidden_size,
                     m.ffn_hidden_size, m.num_heads, m.vocab_size, m.word_embed_proj_dim, tp,
                     recipe.parallel.sp and tp > 1, m.dropout > 0)


def stage_memory(recipe, tp: int, pp: int, dp: int, shard: str, pp_rank: int,
                 device: str = "cuda") -> tuple[int, RankMemory]:
    """(parameters, memory) of a rank of pipeline stage `pp_rank`."""
    m, p, t = recipe.model, recipe.parallel, recipe.train
    w = WEIGHT_BYTES[recipe.precision.dtype]
    virtual = p.virtual_stages if pp > 1 else 1
    micro_batches = t.global_batch_size // (t.micro_batch_size * dp)
    peak = act.peak_bytes(activation_shape(recipe, tp), act.ElementSizes.of(w, device), m, pp,
                          pp_rank, micro_batches, virtual, p.recompute,
                          recipe.kernels.loss_chunk_tokens)
    params = local_params(m, tp, pp, pp_rank, virtual)
    memory = rank_memory(params, w, dp, shard, peak, largest_unit_params(m, tp, pp, pp_rank),
                         fp32_model=w == 4)
    return params, memory


def plan_layout(recipe, tp: int, pp: int, dp: int, shard: str, gpu: GPU,
                gpus_per_node: int = 8, matmul_efficiency: float | None = None) -> Plan:
    m, p, t = recipe.model, recipe.parallel, recipe.train
    w = WEIGHT_BYTES[recipe.precision.dtype]
    stages = sorted({0, pp - 1})
    per_stage = {s: stage_memory(recipe, tp, pp, dp, shard, s) for s in stages}
    busiest = max(stages, key=lambda s: per_stage[s][1].peak_bytes)
    params, memory = per_stage[busiest]
    # Elementwise traffic follows the activations a layer produces, recomputed or not.
    x = activation_shape(recipe, tp)
    layers = max(n for n, _ in stage_loads(m.num_layers, pp))
    traffic = layers * act.layer_bytes(x, act.ElementSizes.of(w))
    time = step_time(m, gpu=gpu, gpus_per_node=gpus_per_node, tp=tp, pp=pp, dp=dp,
                     virtual=p.virtual_stages if pp > 1 else 1, shard=shard,
                     recompute=p.recompute, sp=x.sp, seq=recipe.data.seq_length,
                     micro=t.micro_batch_size, global_batch=t.global_batch_size, w=w,
                     params_per_rank=max(n for n, _ in per_stage.values()),
                     activation_bytes_per_micro=traffic, matmul_efficiency=matmul_efficiency)
    return Plan(tp, pp, dp, shard, busiest, params, memory, time,
                gpu.memory_gib * USABLE_FRACTION * 2**30,
                gpu.peak_tflops if w == 2 else gpu.fp32_tflops)


def why_not(recipe, tp: int, pp: int, dp: int, gpus_per_node: int) -> str | None:
    """Why the engine cannot run tp x pp x dp for this recipe (None: it can)."""
    m, p, t = recipe.model, recipe.parallel, recipe.train
    if tp > gpus_per_node:
        return f"tensor parallelism across nodes (tp {tp} > {gpus_per_node} GPUs per node)"
    for key in ("num_heads", "ffn_hidden_size", "vocab_size"):
        if getattr(m, key) % tp:
            return f"model.{key} does not split {tp} ways"
    virtual = p.virtual_stages if pp > 1 else 1
    if m.num_layers < pp * virtual:
        return f"{m.num_layers} layers cannot fill {pp * virtual} stages"
    if t.global_batch_size % (t.micro_batch_size * dp):
        return f"global batch {t.global_batch_size} does not split over {dp} replicas"
    if p.sp and tp > 1 and recipe.data.seq_length % tp:
        return f"seq_length does not split {tp} ways for sequence parallelism"
    if virtual > 1 and (t.global_batch_size // (t.micro_batch_size * dp)) % pp:
        return "the interleaved schedule needs micro-batches in multiples of pp"
    return None


def layouts(recipe, gpus: int, gpu: GPU, shards=("none", "zero1", "zero3"),
            gpus_per_node: int = 8, matmul_efficiency: float | None = None
            ) -> tuple[list[Plan], dict[tuple[int, int, int], str]]:
    """Every plan the engine can run on `gpus`, and the layouts skipped with the reason."""
    plans, skipped = [], {}
    for tp in (d for d in range(1, gpus + 1) if gpus % d == 0):
        for pp in (d for d in range(1, gpus // tp + 1) if (gpus // tp) % d == 0):
            dp = gpus // (tp * pp)
            why = why_not(recipe, tp, pp, dp, gpus_per_node)
            if why is not None:
                skipped[(tp, pp, dp)] = why
                continue
            for shard in shards:
                if shard != "none" and dp == 1:
                    continue  # nothing to shard over
                plans.append(plan_layout(recipe, tp, pp, dp, shard, gpu, gpus_per_node,
                                         matmul_efficiency))
    return plans, skipped
