"""How long one optimizer step takes on a layout: FLOPs over the GPU's rate plus the time spent
communicating that nothing hides. An estimate to rank layouts and size a job, not a measurement.

Per data-parallel rank, with m micro-batches per step, each stage holding L / pp layers:

    compute      the busiest stage's hardware FLOPs / (tp * dp * peak * matmul_efficiency):
                 the needed FLOPs (model/flops.py: 6 x weight-matmul parameters per token,
                 causal attention over each sample's full row) of its layers, plus one more
                 forward of them under `recompute: full`, plus the output layer on the last
                 stage (the pipeline moves at its slowest stage's pace)
    elementwise  memory-bound work (LayerNorm, dropout, residuals, ReLU): every activation byte
                 written in forward, read and its gradient written in backward (3x the saved
                 activations, 4x under recomputation), at the HBM bandwidth
    tensor par.  per layer 2 all-reduces forward and 2 backward (+2 recomputed) of T h w
                 bytes (with SP all-gathers and reduce-scatters of the same total volume), not
                 overlapped, over NVLink (TP stays inside a node)
    pipeline     the 1F1B bubble, (pp - 1) / v of one micro-batch's forward + backward, plus
                 the blocking point-to-point activation and gradient of each micro-batch
    data par.    none: the bucketed all-reduce of w bytes per parameter, hidden behind the
                 last micro-batch's backward as far as it lasts; zero1: reduce-scatter
                 of the fp32 flat gradients then all-gather of the weights, after backward;
                 zero3: all-gather of the weights for forward and for backward and
                 reduce-scatter of the gradients, each micro-batch, overlapped with compute

A ring collective of B bytes over n ranks takes 2 (n - 1) / n B / busbw (all-reduce) or half
that (all-gather, reduce-scatter); a group that leaves its node runs at the per-GPU network
bandwidth (planner/hardware.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from optiml_engine.model.flops import training_flops  # the engine's one FLOP formula


@dataclass
class StepTime:
    compute: float
    elementwise: float
    tensor_parallel: float
    pipeline: float
    data_parallel: float
    needed_flops: float
    gpus: int
    tokens: int

    @property
    def seconds(self) -> float:
        return (self.compute + self.elementwise + self.tensor_parallel + self.pipeline
                + self.data_parallel)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def tflops_per_gpu(self) -> float:
        """Needed (model) FLOPs per second per GPU, in TFLOP/s."""
        return self.needed_flops / self.seconds / self.gpus / 1e12

    def mfu(self, peak_tflops: float) -> float:
        return self.tflops_per_gpu / peak_tflops


def ring(bytes_: float, n: int, busbw_gbps: float, all_reduce: bool = True) -> float:
    if n <= 1:
        return 0.0
    factor = 2.0 if all_reduce else 1.0
    return factor * (n - 1) / n * bytes_ / (busbw_gbps * 1e9)


def flops_per_step(cfg, samples: int, seq: int, recompute: str) -> tuple[float, float, float]:
    """(needed, hardware FLOPs of the decoder layers, of the output layer) of a step of
    `samples` full rows: every token has a loss and attends causally over its whole row (the
    most a packed row can need)."""
    tokens, pairs = samples * seq, samples * seq * (seq + 1) // 2
    needed = training_flops(cfg, tokens, tokens, pairs)
    output = training_flops(cfg, 0, tokens, 0)
    layers = needed - output
    if recompute == "full":  # the layers' forward once more: a third of their work
        layers *= 4 / 3
    return needed, layers, output


def stage_loads(num_layers: int, pp: int) -> list[tuple[int, bool]]:
    from optiml_engine.distributed.pipeline import stage_layer_range

    return [(len(stage_layer_range(num_layers, pp, s)), s == pp - 1) for s in range(pp)]


def step_time(cfg, *, gpu, gpus_per_node: int, tp: int, pp: int, dp: int, virtual: int,
              shard: str, recompute: str, sp: bool, seq: int, micro: int, global_batch: int,
              w: int, params_per_rank: int, activation_bytes_per_micro: int,
              matmul_efficiency: float | None = None) -> StepTime:
    """activation_bytes_per_micro: what one micro-batch saves on the busiest stage."""
    gpus = tp * pp * dp
    m = global_batch // (micro * dp)
    eff = gpu.matmul_efficiency if matmul_efficiency is None else matmul_efficiency
    peak = gpu.peak_tflops if w == 2 else gpu.fp32_tflops
    needed, layer_flops, output_flops = flops_per_step(cfg, global_batch, seq, recompute)
    # The pipeline runs at its slowest stage's pace: the most layers, and the last stage's
    # output layer on top of its own.
    busiest = max(stage_layers * layer_flops / cfg.num_layers + (output_flops if last else 0.0)
                  for stage_layers, last in stage_loads(cfg.num_layers, pp))
    compute = busiest / (tp * dp) / (peak * 1e12 * eff)
    passes = 4 if recompute == "full" else 3
    elementwise = m * passes * activation_bytes_per_micro / (gpu.hbm_gbps * 1e9)
    layers = cfg.num_layers / pp
    activation = seq * micro * cfg.hidden_size * w  # T h w: one rank's tensor-parallel traffic
    collectives = 6 if recompute == "full" else 4
    tensor_parallel = m * layers * collectives * ring(activation, tp, gpu.intra_busbw_gbps)
    per_micro = (compute + elementwise + tensor_parallel) / m
    # Neighbouring stages are tp * dp ranks apart: once the job leaves a node, some pair of
    # neighbours sits on two nodes, and the pipeline moves at that pair's pace.
    p2p_bw = gpu.intra_busbw_gbps if gpus <= gpus_per_node else gpu.inter_busbw_gbps
    p2p = 0.0 if pp == 1 else m * virtual * 2 * activation / (tp if sp else 1) / (p2p_bw * 1e9)
    pipeline = (pp - 1) / virtual * per_micro + p2p
    dp_bw = gpu.intra_busbw_gbps if tp * dp <= gpus_per_node else gpu.inter_busbw_gbps
    grads = params_per_rank * w
    if shard == "none":
        backward = per_micro * 2 / 3
        data_parallel = max(0.0, ring(grads, dp, dp_bw) - backward)
    elif shard == "zero1":
        data_parallel = (ring(4 * params_per_rank, dp, dp_bw, all_reduce=False)
                         + ring(grads, dp, dp_bw, all_reduce=False))
    else:
        per_micro_comm = 3 * ring(grads, dp, dp_bw, all_reduce=False)
        data_parallel = m * max(0.0, per_micro_comm - per_micro)
    return StepTime(compute, elementwise, tensor_parallel, pipeline, data_parallel, needed,
                    gpus, global_batch * seq)
