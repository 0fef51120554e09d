"""Typed recipe schema, YAML loading and `key.sub=value` overrides.

A recipe is a YAML file with one mapping per section. Every field has a type, a default and a
one-line doc (`doc(...)`), and may declare allowed `choices` or a numeric range. Anything else is
rejected with one line naming the file, the key and the allowed values; floats must be finite, and
sizes have documented upper bounds (`MAX_POSITIONS` ... below) checked before anything is built.

These keys are a contract with scripts outside the repository: train.steps, train.seed,
train.micro_batch_size, train.global_batch_size, data.seq_length, optim.lr, model.dropout,
precision.dtype, parallel.tp, parallel.pp, parallel.sp, checkpoint.dir, checkpoint.load,
logging.dir.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from optiml_engine.errors import OptimlError, parse_yaml, read_text


def doc(
    text: str, default: Any = dataclasses.MISSING, *, choices=None, min=None, max=None, factory=None
):
    """A dataclass field with its documentation and constraints kept next to the default."""
    meta = {"doc": text, "choices": choices, "min": min, "max": max}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Documented bounds on sizes, so that a typo (10**9 positions) is refused before anything is
# allocated rather than attempted (a 10**9-position table is 256 GB at width 64). They are far
# above every published OPT (175B: 96 layers, width 12288, 2048 positions, 50272 tokens).
MAX_POSITIONS = 1 << 17  # model.max_position_embeddings and data.seq_length: 131072
MAX_VOCAB = 1 << 20  # model.vocab_size: 1048576
MAX_WIDTH = 1 << 16  # model.hidden_size, model.word_embed_proj_dim (ffn: 4x): 65536
MAX_LAYERS = 1024  # model.num_layers, model.num_heads
MAX_MICRO_BATCH_TOKENS = 1 << 24  # train.micro_batch_size x data.seq_length: 16M tokens


@dataclass
class ModelConfig:
    preset: str | None = doc(
        "published OPT size; fills every unset dimension below",
        None,
        choices=[None, "125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b", "175b"],
    )
    hf_path: str | None = doc(
        "load initial weights from this local Hugging Face OPT directory", None
    )
    vocab_size: int | None = doc("vocabulary size (OPT: 50272)", None, min=8, max=MAX_VOCAB)
    hidden_size: int | None = doc("model width", None, min=1, max=MAX_WIDTH)
    num_layers: int | None = doc("decoder layers", None, min=1, max=MAX_LAYERS)
    num_heads: int | None = doc("attention heads; hidden_size must be divisible by it", None,
                                min=1, max=MAX_LAYERS)
    ffn_hidden_size: int | None = doc("ReLU FFN width (OPT: 4 x hidden_size)", None, min=1,
                                      max=4 * MAX_WIDTH)
    max_position_embeddings: int | None = doc("learned positions (OPT: 2048)", None, min=1,
                                              max=MAX_POSITIONS)
    word_embed_proj_dim: int | None = doc(
        "embedding width; smaller than hidden_size only in 350M (project_in/out)", None, min=1,
        max=MAX_WIDTH)
    pre_layer_norm: bool | None = doc("pre-LN blocks (every OPT but 350M, which is post-LN)", None)
    dropout: float = doc(
        "dropout on residual branches and embeddings (OPT-IML: 0.1)", 0.1, min=0.0, max=1.0
    )
    attention_dropout: float = doc("dropout on attention probabilities", 0.0, min=0.0, max=1.0)
    init_std: float = doc("std of the normal initialisation of weights", 0.02, min=0.0)


# Published OPT dimensions (Zhang et al. 2022, table 1), next to the schema so that validating a
# recipe needs nothing above config. name: (layers, hidden, heads). Every OPT has a 4x ReLU FFN,
# 2048 positions and 50272 tokens.
OPT_PRESETS: dict[str, tuple[int, int, int]] = {
    "125m": (12, 768, 12),
    "350m": (24, 1024, 16),
    "1.3b": (24, 2048, 32),
    "2.7b": (32, 2560, 32),
    "6.7b": (32, 4096, 32),
    "13b": (40, 5120, 40),
    "30b": (48, 7168, 56),
    "66b": (64, 9216, 72),
    "175b": (96, 12288, 96),
}


def resolve_model_config(model, where: str = "recipe"):
    """Fill unset fields of a `config.ModelConfig` from its preset or OPT's defaults, in place."""
    if model.preset is not None:
        layers, hidden, heads = OPT_PRESETS[model.preset]
        preset = {"num_layers": layers, "hidden_size": hidden, "num_heads": heads}
        if model.preset == "350m":  # the one post-LN OPT, with a 512-d embedding projected in/out
            preset.update(word_embed_proj_dim=512, pre_layer_norm=False)
        for key, value in preset.items():
            if getattr(model, key) is None:
                setattr(model, key, value)
    for key in ("hidden_size", "num_layers", "num_heads"):
        if getattr(model, key) is None:
            raise OptimlError(f"{where}: model.{key}", "is not set",
                              "set it, or choose model.preset (125m ... 175b)")
    defaults = {
        "vocab_size": 50272,
        "ffn_hidden_size": 4 * model.hidden_size,
        "max_position_embeddings": 2048,
        "word_embed_proj_dim": model.hidden_size,
        "pre_layer_norm": True,
    }
    for key, value in defaults.items():
        if getattr(model, key) is None:
            setattr(model, key, value)
    if model.hidden_size % model.num_heads:
        raise OptimlError(f"{where}: model.num_heads",
                          f"hidden_size {model.hidden_size} is not divisible by {model.num_heads}",
                          "choose a divisor of model.hidden_size")
    return model


@dataclass
class DataConfig:
    train_path: str | None = doc(
        "training data: a JSONL file of {src, tgt} records, or a built bench directory", None
    )
    valid_path: str | None = doc("optional held-out JSONL of {src, tgt} records", None)
    synthetic: bool = doc(
        "generate the embedded synthetic instruction set instead of reading train_path", False
    )
    synthetic_examples: int = doc("examples the synthetic generator writes", 2000, min=1,
                                  max=10_000_000)
    tokenizer: str = doc(
        "'byte' (needs no files), a tokenizer.json, or a directory with vocab.json + merges.txt",
        "byte",
    )
    seq_length: int = doc("tokens per packed sample (OPT-IML: 2048)", 2048, min=2,
                          max=MAX_POSITIONS)
    shuffle: bool = doc("shuffle packed samples each epoch (deterministic given train.seed)", True)
    bench: str | None = doc(
        "a built bench directory (`optiml data build`); training draws from it by the mixture "
        "below", None)
    sampling: str = doc("per-task weights inside a benchmark (OPT-IML: eps)", "eps",
                        choices=["proportional", "eps", "uniform", "temperature"])
    eps_cap: int = doc("eps: per-task cap on the examples that count for its weight "
                       "(OPT-IML: 4096)", 4096, min=1)
    temperature: float = doc("temperature sampling: weight = examples ** (1 / T)", 1.0,
                             min=0.01)
    benchmark_proportions: list[str] = doc(
        "benchmark shares as 'name=percent' (OPT-IML: crossfit=4 exmix=2 flan=20 superni=25 "
        "promptsource=45 t5=2 unifiedskg=2); empty: by task weights", factory=list)
    mix_reasoning: float = doc("percent of the stream from reasoning (chain-of-thought) tasks "
                               "(OPT-IML: 1)", 0.0, min=0.0, max=100.0)
    mix_pretraining: float = doc("percent of the stream from pre-training text (OPT-IML: 5)", 0.0,
                                 min=0.0, max=100.0)
    mix_dialogue: float = doc("percent of the stream from dialogue data (OPT-IML: 0)", 0.0,
                              min=0.0, max=100.0)
    task_subset: int | None = doc(
        "train on this many of the bench's training tasks: a random subset, nested given "
        "train.seed (the 16-task set is inside the 64-task set), fully supervised tasks always "
        "in it (§4.4; data/subsets.py); null: all tasks", None, min=1)
    keep_supervised_tasks: bool = doc(
        "task_subset always keeps the fully supervised tasks (training tasks with level-3 "
        "instances, §4.4); false: drawn like the others (the synthetic bench, where every "
        "training task has level-3 instances)", True)
    category_subset: int | None = doc(
        "train on the tasks of the first N categories by decreasing training-task count (ties: "
        "by name), plus data.keep_categories (§4.4); null: all categories", None, min=1)
    keep_categories: list[str] = doc(
        "categories category_subset always keeps (§4.4: those of the fully supervised "
        "validation tasks); ones the bench lacks are said once", factory=lambda: [
            "Question Answering", "Summarization", "Dialogue Generation"])
    loss_on: str = doc("tokens the loss covers: target (each example's target and closing </s>, "
                       "OPT-IML §3.2) or sequence (source and target)", "target",
                       choices=["target", "sequence"])
    packing: str = doc(
        "documents: packed, attention within each example (OPT-IML §3.1); "
        "no_document_attention: packed, attention across the examples of a sample (positions "
        "still restart); padded: one example per sample", "documents",
        choices=["documents", "no_document_attention", "padded"])


@dataclass
class ParallelConfig:
    tp: int = doc("tensor-parallel size", 1, min=1)
    pp: int = doc("pipeline-parallel size", 1, min=1)
    sp: bool = doc("sequence parallelism inside the tensor-parallel group", False)
    virtual_stages: int = doc(
        "model chunks per pipeline rank (interleaved 1F1B when > 1)", 1, min=1
    )
    shard: str = doc(
        "what is sharded over data-parallel ranks: none; zero1 (fp32 masters, Adam moments and "
        "reduced gradients); zero3 (also the decoder layers' weights, gathered per layer for "
        "forward and backward; the paper's FSDP, §3.3)", "none",
        choices=["none", "zero1", "zero3"])
    recompute: str = doc("activation recomputation", "none", choices=["none", "full"])
    backend: str = doc("torch.distributed backend", "auto", choices=["auto", "nccl", "gloo"])
    timeout_minutes: float = doc(
        "how long a collective may wait for the other ranks before the job fails (torch's "
        "default: 10; raise it when a first checkpoint load or save on a shared filesystem "
        "takes longer, docs/launch.md)", 10.0, min=0.1, max=24 * 60)
    bucket_mb: float = doc("gradient reduction bucket size in MB (of fp32 elements)", 25.0,
                           min=0.0)

    @property
    def zero1(self) -> bool:
        """Whether the optimizer state is sharded (zero1 or zero3); read by the planner."""
        return self.shard != "none"


@dataclass
class OptimConfig:
    lr: float = doc("peak learning rate (OPT-IML: 5e-5)", 5e-5, min=0.0)
    min_lr: float = doc("learning rate at the end of the decay", 0.0, min=0.0)
    betas: list[float] = doc("Adam betas", factory=lambda: [0.9, 0.95])
    eps: float = doc("Adam epsilon", 1e-8, min=0.0)
    weight_decay: float = doc("decoupled weight decay (not on biases and LayerNorm)", 0.1, min=0.0)
    clip_grad: float = doc("global gradient-norm clip; 0 disables", 1.0, min=0.0)
    warmup_steps: int = doc("linear warm-up steps (OPT-IML: 60)", 60, min=0)
    schedule: str = doc("decay after warm-up", "linear", choices=["linear", "cosine", "constant"])


@dataclass
class PrecisionConfig:
    dtype: str = doc("compute dtype of the model", "fp32", choices=["fp32", "bf16", "fp16"])
    initial_loss_scale: float = doc("fp16 dynamic loss scale at start", 2.0**16, min=1.0)
    loss_scale_window: int = doc("fp16: clean steps before the scale doubles", 1000, min=1)
    hysteresis: int = doc("fp16: overflows tolerated before the scale halves", 2, min=1)
    min_loss_scale: float = doc("fp16: the scale never goes below this", 1.0, min=0.0)
    max_skipped_steps: int = doc("abort after this many consecutive skipped steps", 50, min=1)


@dataclass
class TrainConfig:
    steps: int = doc("optimizer steps to run", 100, min=1)
    seed: int = doc("seed for weights, data order and dropout", 1234, min=0)
    micro_batch_size: int = doc("packed samples per micro-batch per data-parallel rank", 1, min=1)
    global_batch_size: int = doc(
        "packed samples per optimizer step over all micro-batches and data-parallel ranks", 8, min=1
    )
    stop_after: int | None = doc(
        "end the run (with a checkpoint) after this many steps; the LR schedule still spans "
        "train.steps, so a later run with checkpoint.load=latest continues it",
        None,
        min=1,
    )


@dataclass
class CheckpointConfig:
    dir: str | None = doc("where checkpoints are written; none disables saving", None)
    interval: int = doc("save every N steps (and at the end); 0: only at the end", 0, min=0)
    load: str | None = doc("'latest' in checkpoint.dir, or a checkpoint path to resume from", None)
    keep_last: int = doc("checkpoints of this run kept in checkpoint.dir (its older ones are "
                         "deleted; never another run's)", 2, min=1)
    verify: bool = doc("check a checkpoint's files against the checksums in its meta.json before "
                       "loading it (false: faster, trusts the disk)", True)
    save_initial: bool = doc(
        "also write the untrained model to checkpoint.dir/initial (a baseline to evaluate)", False)
    async_save: bool = doc(
        "write checkpoints in the background (dcp.async_save): the step's tensors are copied, "
        "training goes on, the checkpoint is finished before the next save, a load or exit", False)


@dataclass
class EvalConfig:
    interval: int = doc("evaluate every N steps during training; 0 disables", 0, min=0)
    bench: str | None = doc("bench manifest (or directory) to evaluate on", None)
    shots: list[int] = doc("numbers of demonstrations to evaluate with", factory=lambda: [0])
    max_new_tokens: int = doc("greedy decoding budget (OPT-IML: 256)", 256, min=1)
    max_instances: int = doc("instances per task evaluated (Super-NI: 100)", 100, min=1)
    batch_size: int = doc("prompts per evaluation batch", 8, min=1)
    subset_tasks: int = doc("in-training evaluation: tasks per level, stratified by kind of "
                            "scoring and category (logged as eval/subset/...)", 4, min=1)
    subset_instances: int = doc("in-training evaluation: instances per task", 20, min=1)
    length_normalize: bool = doc(
        "rank classification picks the highest mean (not summed) token log-likelihood", False)
    protocol: str = doc("scoring and averaging rules: the paper's (Super-NI by generation + "
                        "ROUGE-L, categories as task means; see optiml eval --help) or the "
                        "engine's earlier ones", "paper", choices=["paper", "engine"])


@dataclass
class KernelsConfig:
    attention: str = doc(
        "attention backend", "auto",
        choices=["auto", "triton", "segments", "sdpa", "flash_attn"]
    )
    cross_entropy: str = doc(
        "masked cross-entropy backend", "auto", choices=["auto", "triton", "torch"]
    )
    adamw: str = doc("AdamW backend", "auto", choices=["auto", "cuda", "triton", "apex",
                                                              "torch_fused", "foreach"])
    loss_chunk_tokens: int = doc(
        "tokens per chunk of the fused output projection + loss (logits never exist in full); "
        "0 computes the full logits then the loss", 4096, min=0)


@dataclass
class LoggingConfig:
    dir: str | None = doc("TensorBoard event files go under this directory; none disables", None)
    interval: int = doc("log every N steps", 10, min=1)
    peak_tflops: float | None = doc(
        "peak TFLOP/s per device that train/mfu divides by; none: the device's entry in "
        "model/flops.py PEAK_TFLOPS (A100, H100, H200 bf16 dense; a CPU needs this key)",
        None, min=1e-6)


@dataclass
class Recipe:
    model: ModelConfig = doc("the OPT model", factory=ModelConfig)
    data: DataConfig = doc("training data", factory=DataConfig)
    parallel: ParallelConfig = doc("parallel layout", factory=ParallelConfig)
    optim: OptimConfig = doc("optimizer and schedule", factory=OptimConfig)
    precision: PrecisionConfig = doc("mixed precision", factory=PrecisionConfig)
    train: TrainConfig = doc("training loop", factory=TrainConfig)
    checkpoint: CheckpointConfig = doc("checkpoints", factory=CheckpointConfig)
    eval: EvalConfig = doc("evaluation", factory=EvalConfig)
    kernels: KernelsConfig = doc("kernel backends", factory=KernelsConfig)
    logging: LoggingConfig = doc("console and TensorBoard logging", factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved recipe, loadable by `load_recipe` (written next to each checkpoint)."""
        import json

        return yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Parsing


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return tp.__name__


def _coerce(value, tp, key: str, where: str):
    """Check `value` against the annotation `tp`; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key, where)
            except OptimlError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, list | tuple):
            (item_tp,) = typing.get_args(tp)
            return [_coerce(v, item_tp, key, where) for v in value]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise OptimlError(f"{where}: {key}", f"{value!r} is not a finite number",
                                  "write a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise OptimlError(
        f"{where}: {key}", f"expected {_type_name(tp)}, got {value!r}", f"write {_type_name(tp)}"
    )


def _check_field(f: dataclasses.Field, value, key: str, where: str):
    meta = f.metadata
    if meta.get("choices") is not None and value not in meta["choices"]:
        allowed = ", ".join("null" if c is None else str(c) for c in meta["choices"])
        raise OptimlError(f"{where}: {key}", f"{value!r} is not allowed", f"allowed: {allowed}")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None or isinstance(v, str | bool):
            continue
        if meta.get("min") is not None and v < meta["min"]:
            raise OptimlError(
                f"{where}: {key}", f"{v!r} is below the minimum", f"allowed: >= {meta['min']}"
            )
        if meta.get("max") is not None and v > meta["max"]:
            raise OptimlError(
                f"{where}: {key}", f"{v!r} is above the maximum", f"allowed: <= {meta['max']}"
            )


# Keys that were renamed: refused with the new spelling rather than a guess.
RENAMED = {"parallel.zero1": ("was replaced by parallel.shard",
                              "write parallel.shard: zero1 (for true) or none (for false); "
                              "zero3 also shards the weights")}


def _unknown_key(key: str, known: list[str], where: str, prefix: str) -> OptimlError:
    if f"{prefix}{key}" in RENAMED:
        what, fix = RENAMED[f"{prefix}{key}"]
        return OptimlError(f"{where}: {prefix}{key}", what, fix)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known keys: {', '.join(known)}"
    return OptimlError(f"{where}: {prefix}{key}", "unknown key", hint)


def _build(cls, data, where: str, prefix: str = ""):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OptimlError(
            f"{where}: {prefix.rstrip('.') or 'recipe'}",
            f"expected a mapping, got {data!r}",
            "write key: value lines",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(str(key), list(fields), where, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, where, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}", where)
            _check_field(fields[key], kwargs[key], f"{prefix}{key}", where)
    return cls(**kwargs)


def parse_override(text: str, where: str = "command line") -> tuple[list[str], Any]:
    """`optim.lr=1e-4` -> (["optim", "lr"], 1e-4); the value is read as YAML."""
    if "=" not in text:
        raise OptimlError(f"{where}: {text}", "an override needs '='", "write section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = read_yaml(raw) if raw != "" else None
    except (yaml.YAMLError, RecursionError):
        value = raw
    keys = key.strip().split(".")
    try:  # checked here, so that its errors name the override rather than the recipe file
        _check_path(Recipe, keys, value)
    except OptimlError as e:
        inner = e.where.removeprefix(": ")  # the key inside a whole-section override
        what = e.what if inner in ("", key.strip()) else f"{inner}: {e.what}"
        raise OptimlError(f"{where}: {text}", what, e.fix) from None
    return keys, value


def _check_path(cls, keys: list[str], value, prefix: str = "") -> None:
    """Validate `value` as the field (or whole section) at `keys` of the dataclass `cls`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    key, rest = keys[0], keys[1:]
    if key not in fields:
        raise _unknown_key(key, list(fields), "", prefix)
    tp = typing.get_type_hints(cls)[key]
    if dataclasses.is_dataclass(tp):
        if rest:
            _check_path(tp, rest, value, f"{prefix}{key}.")
        else:
            _build(tp, value, "", f"{prefix}{key}.")
    elif rest:
        raise OptimlError("", f"'{prefix}{key}' is not a section", f"write {prefix}{key}=VALUE")
    else:
        _check_field(fields[key], _coerce(value, tp, f"{prefix}{key}", ""), f"{prefix}{key}", "")


def _merge(tree: dict, path: list[str], value) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise OptimlError(f"command line: {'.'.join(path)}", f"'{part}' is not a section")
    node[path[-1]] = value


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads `5e-5` as a string; recipes mean a float, as YAML 1.2 does."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|"
        r"^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$|^[-+]?\.[0-9_]+$|^[-+]?\.(?:inf|Inf|INF)$|"
        r"^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def read_yaml(text: str):
    return yaml.load(text, Loader=_RecipeLoader)


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe, apply `key.sub=value` overrides, validate everything."""
    tree: dict = {}
    where = str(path) if path is not None else "recipe"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise OptimlError(where, "recipe file not found", "pass the path of a YAML recipe")
        tree = parse_yaml(read_text(p), where, _RecipeLoader) or {}
    for text in overrides:
        keys, value = parse_override(text)
        _merge(tree, keys, value)
    recipe = _build(Recipe, tree, where)
    validate(recipe, where)
    return recipe


def validate(recipe: Recipe, where: str = "recipe") -> None:
    """Checks that involve more than one field."""
    resolve_model_config(recipe.model, where)
    m = recipe.model
    if recipe.data.seq_length > m.max_position_embeddings:
        raise OptimlError(
            f"{where}: data.seq_length",
            f"{recipe.data.seq_length} exceeds the model's {m.max_position_embeddings} positions",
            f"allowed: <= {m.max_position_embeddings}",
        )
    if len(recipe.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in recipe.optim.betas):
        raise OptimlError(
            f"{where}: optim.betas",
            f"{recipe.optim.betas} is not two values in [0, 1)",
            "write e.g. [0.9, 0.95]",
        )
    tokens = recipe.train.micro_batch_size * recipe.data.seq_length
    if tokens > MAX_MICRO_BATCH_TOKENS:
        raise OptimlError(
            f"{where}: train.micro_batch_size",
            f"{recipe.train.micro_batch_size} x data.seq_length {recipe.data.seq_length} = "
            f"{tokens} tokens per micro-batch, above the bound of {MAX_MICRO_BATCH_TOKENS}",
            "use a smaller micro-batch; gradient accumulation keeps the global batch",
        )
    if recipe.train.global_batch_size % recipe.train.micro_batch_size:
        raise OptimlError(
            f"{where}: train.global_batch_size",
            f"{recipe.train.global_batch_size} is not a multiple of "
            f"train.micro_batch_size={recipe.train.micro_batch_size}",
            "make it a multiple",
        )
    if m.num_heads % recipe.parallel.tp:
        raise OptimlError(
            f"{where}: parallel.tp",
            f"{m.num_heads} heads cannot be split {recipe.parallel.tp} ways",
            "choose a divisor of model.num_heads",
        )
    if (
        recipe.checkpoint.load is not None
        and recipe.checkpoint.load == "latest"
        and recipe.checkpoint.dir is None
    ):
        raise OptimlError(
            f"{where}: checkpoint.load", "'latest' needs checkpoint.dir", "set checkpoint.dir"
        )
    _check_directory(recipe.logging.dir, f"{where}: logging.dir")


# --------------------------------------------------------------------------------------------
# `optiml config show`: the resolved recipe, each value with its doc and where it came from

def _leaves(tree, prefix: str = "") -> dict[str, Any]:
    """{"section.key": value} of a (partial) recipe tree; a non-mapping value is a leaf."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree} if prefix else {}
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict)
                   else {f"{prefix}{key}": value})
    return out


def _tagged(tree, origin: str):
    """`tree` with each leaf value replaced by (origin, value)."""
    if isinstance(tree, dict):
        return {key: _tagged(value, origin) for key, value in tree.items()}
    return (origin, tree)


def recipe_origins(path: str | Path, overrides: list[str] = ()) -> tuple[Recipe, dict[str, str]]:
    """`load_recipe(path, overrides)` and, for each "section.key", where its value came from:
    "override" (the command line), "file", "default" (the schema) or "derived" (a model
    dimension left unset and filled in from model.preset or OPT's rules)."""
    recipe = load_recipe(path, overrides)
    tree = _tagged(read_yaml(Path(path).read_text()) or {}, "file") if path is not None else {}
    for text in overrides:  # merged as load_recipe merges them: a later one wins
        keys, value = parse_override(text)
        _merge(tree, keys, _tagged(value, "override"))
    given = _leaves(tree)
    origins = {}
    for section in dataclasses.fields(recipe):
        config = getattr(recipe, section.name)
        for f in dataclasses.fields(config):
            key = f"{section.name}.{f.name}"
            origin, raw = given.get(key, ("default", f.default))
            unset = raw is None and getattr(config, f.name) is not None
            origins[key] = "derived" if unset else origin
    return recipe, origins


def _yaml_value(value) -> str:
    """`value` as one line of YAML that `read_yaml` reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("...").strip()  # a bare scalar ends its document
    if read_yaml(text) != value:  # e.g. the string '1e5', a float to the recipe loader
        text = yaml.safe_dump(value, default_style='"', width=10**6).strip()
    return text


def _field_doc(f: dataclasses.Field) -> str:
    meta, extra = f.metadata, []
    if meta.get("choices") is not None:
        extra.append("one of " + ", ".join("null" if c is None else str(c)
                                           for c in meta["choices"]))
    if meta.get("min") is not None:
        extra.append(f">= {meta['min']}")
    if meta.get("max") is not None:
        extra.append(f"<= {meta['max']}")
    return meta.get("doc", "") + (f" ({'; '.join(extra)})" if extra else "")


def show_recipe(path: str | Path, overrides: list[str] = ()) -> str:
    """The resolved recipe as YAML: every field, its origin and doc as a comment. It loads back
    (`load_recipe`) as the same recipe."""
    recipe, origins = recipe_origins(path, overrides)
    lines = [f"# optiml config show {' '.join([str(path), *overrides])}",
             "# Every field of the resolved recipe; the comment says where its value came from",
             "# ([override] the command line, [file] the recipe, [default] the schema, [derived]",
             "# filled in from model.preset or OPT's rules), then what the field means.", ""]
    for section in dataclasses.fields(recipe):
        lines.append(f"{section.name}:  # {section.metadata['doc']}")
        config = getattr(recipe, section.name)
        rows = [(f"  {f.name}: {_yaml_value(getattr(config, f.name))}",
                 f"[{origins[f'{section.name}.{f.name}']}] {_field_doc(f)}")
                for f in dataclasses.fields(config)]
        width = max(len(code) for code, _ in rows)
        lines += [f"{code.ljust(width)}  # {comment}" for code, comment in rows]
        lines.append("")
    return "\n".join(lines)


def _check_directory(path: str | None, where: str) -> None:
    """A directory the run will create or write into: refused now if it, or the nearest of its
    parents that exists, is not a directory (found otherwise only when the first write fails)."""
    if path is None:
        return
    p = Path(path)
    for candidate in (p, *p.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == p else f"{candidate} is a file"
                raise OptimlError(where, f"{path}: {what}, not a directory",
                                  "choose a directory path")
            return


def check_field(cls, name: str, value, key: str, where: str):
    """`value` checked against field `name` of the config dataclass `cls` (type, choices, range,
    finiteness) as a recipe's value would be; errors name `key`. For readers of other formats
    (an HF config.json) that fill these dataclasses."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    value = _coerce(value, typing.get_type_hints(cls)[name], key, where)
    _check_field(f, value, key, where)
    return value
