"""From the recipe's data section to packed training samples."""

from __future__ import annotations

import functools
from pathlib import Path

from optiml_engine.data.jsonl import read_src_tgt
from optiml_engine.data.loader import epoch_loader, mixture_loader
from optiml_engine.data.objective import pack_for_objective
from optiml_engine.data.packing import PackedSamples
from optiml_engine.errors import OptimlError


def training_text(recipe) -> list[tuple[str, str]]:
    """(source, target) strings the recipe trains on."""
    data = recipe.data
    if data.synthetic:
        from optiml_engine.data.synthetic import synthetic_src_tgt

        return synthetic_src_tgt(recipe.train.seed, data.synthetic_examples)
    if data.train_path is None:
        raise OptimlError("recipe: data.train_path", "is not set",
                          "point it at a JSONL file of {src, tgt} records, or set data.synthetic")
    return read_src_tgt(Path(data.train_path))


def tokenize_pairs(pairs: list[tuple[str, str]], tokenizer) -> list[tuple[list[int], list[int]]]:
    sources = tokenizer.encode_batch([s for s, _ in pairs])
    targets = tokenizer.encode_batch([t for _, t in pairs])
    return list(zip(sources, targets, strict=True))


def build_loader(recipe, tokenizer, dp_rank: int = 0, dp_size: int = 1):
    """The loader the recipe asks for: a bench's mixture stream, or a finite set of examples."""
    data, train = recipe.data, recipe.train
    if data.bench:
        from optiml_engine.data.mixture import BenchMixture, sampling_spec
        from optiml_engine.data.subsets import subset_spec

        mixture = BenchMixture(data.bench, sampling_spec(data), train.seed, tokenizer,
                               subset=subset_spec(data))
        return mixture_loader(mixture, data.seq_length, train.global_batch_size,
                             train.micro_batch_size, dp_rank, dp_size, seed=train.seed,
                             eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                             pack=objective_packer(data))
    if data.task_subset is not None or data.category_subset is not None:
        raise OptimlError("recipe: data.task_subset", "subsets need a bench's tasks",
                          "set data.bench, or leave data.task_subset/category_subset null")
    samples = build_training_samples(recipe, tokenizer)
    return epoch_loader(samples, train.global_batch_size, train.micro_batch_size, dp_rank,
                        dp_size, seed=train.seed, shuffle=data.shuffle)


def build_training_samples(recipe, tokenizer) -> PackedSamples:
    examples = tokenize_pairs(training_text(recipe), tokenizer)
    if not examples:
        raise OptimlError("recipe: data", "no training examples", "check data.train_path")
    return objective_packer(recipe.data)(examples, recipe.data.seq_length,
                                         eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)


def objective_packer(data_cfg):
    """pack(examples, seq_length, eos_id, pad_id) as data.loss_on and data.packing ask
    (data/objective.py)."""
    return functools.partial(pack_for_objective, loss_on=data_cfg.loss_on,
                             packing=data_cfg.packing)
