"""`optiml <verb>`: train, eval, data, convert, plan, bench, sweep, config.

User errors (`OptimlError`) print one line and exit with code 2; nothing else is swallowed.
"""

from __future__ import annotations

import argparse
import os
import sys

from optiml_engine.errors import OptimlError


def cmd_train(args) -> int:
    from optiml_engine.config import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # fail fast, before the heavy imports
    if args.dry_run:
        from optiml_engine.planner.dry_run import dry_run

        return dry_run(recipe, args.gpus)
    if args.gpus is not None:
        raise OptimlError("optiml train --gpus", "is only read with --dry-run",
                          "launch the processes with torchrun instead")
    from optiml_engine.eval.pipeline_eval import training_evaluator
    from optiml_engine.training.launch import train

    train(recipe, training_evaluator)
    return 0


def cmd_config_show(args) -> int:
    from optiml_engine.config import show_recipe

    print(show_recipe(args.recipe, args.overrides), end="")
    return 0


def cmd_convert(args) -> int:
    from optiml_engine.model.convert import engine_to_hf, hf_to_engine, metaseq_to_engine

    if args.num_heads is not None and args.direction != "metaseq2engine":
        raise OptimlError(f"optiml convert {args.direction}", "--num-heads is only for "
                          "metaseq2engine", "drop --num-heads")
    if args.direction == "hf2engine":
        if not args.hf:
            raise OptimlError("optiml convert hf2engine", "--hf is missing", "pass --hf DIR")
        hf_to_engine(args.hf, args.out, tp=args.tp, pp=args.pp, overwrite=args.overwrite)
    elif args.direction == "metaseq2engine":
        if not args.ckpt:
            raise OptimlError("optiml convert metaseq2engine", "--ckpt is missing",
                              "pass --ckpt DIR (the *-model_part-<r>.pt files)")
        metaseq_to_engine(args.ckpt, args.out, tp=args.tp, pp=args.pp, overwrite=args.overwrite,
                          num_heads=args.num_heads)
    else:
        if not args.ckpt:
            raise OptimlError("optiml convert engine2hf", "--ckpt is missing", "pass --ckpt CKPT")
        engine_to_hf(args.ckpt, args.out, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, say it once
        print(f"wrote {args.out}")
    return 0


# Verbs whose argument parser lives with their module: `main(argv)` there gets the rest of argv.
DELEGATED = {
    "data": ("optiml_engine.data.bench", "build an OPT-IML bench: data build BENCH.yaml --out DIR"),
    "eval": ("optiml_engine.eval.harness", "evaluate a checkpoint on the three levels"),
    "bench": ("optiml_engine.benchmarks.cli", "kernel and system benchmarks"),
    "plan": ("optiml_engine.planner", "memory per GPU and step time of each parallel layout"),
    "sweep": ("optiml_engine.sweep.cli", "run an ablation study (variants x seeds) and report it"),
}


def _recipe_help() -> str:
    """The sections of a recipe with their docs, for `optiml train --help`."""
    import dataclasses

    from optiml_engine.config import Recipe

    sections = "\n".join(f"  {f.name:<11} {f.metadata['doc']}"
                          for f in dataclasses.fields(Recipe))
    return (f"A recipe is YAML with these sections:\n\n{sections}\n\n"
            "`optiml config show RECIPE [overrides]` prints every field of each section: its "
            "value,\nwhere it came from (file, override, default) and its doc.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optiml", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train from a YAML recipe",
                             description="Train from a YAML recipe. " + _recipe_help(),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("recipe", help="YAML recipe (see recipes/)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. "
                       "train.steps=50 optim.lr=1e-3 (a value is read as YAML)")
    train.add_argument("--dry-run", action="store_true",
                       help="build every rank's part on the meta device under a fake process "
                       "group and print its parameters and bytes; trains nothing")
    train.add_argument("--gpus", type=int, default=None,
                       help="--dry-run: the job's world size (default: tp x pp)")
    train.set_defaults(func=cmd_train)

    config = verbs.add_parser("config", help="inspect recipes")
    config_verbs = config.add_subparsers(dest="config_verb", required=True)
    show = config_verbs.add_parser(
        "show", help="print the resolved recipe: every field, its doc and its origin",
        description="Print the resolved recipe as YAML: every field with its value, where the "
        "value came from ([override], [file], [default] or [derived]) and its doc. The output "
        "is itself a recipe that loads back as the same one.")
    show.add_argument("recipe", help="YAML recipe (see recipes/)")
    show.add_argument("overrides", nargs="*", help="section.key=value overrides, as for train")
    show.set_defaults(func=cmd_config_show)

    convert = verbs.add_parser("convert", help="convert checkpoints")
    convert.add_argument("direction", choices=["hf2engine", "engine2hf", "metaseq2engine"])
    convert.add_argument("--hf", help="Hugging Face OPT directory (hf2engine)")
    convert.add_argument("--ckpt", help="engine checkpoint directory (engine2hf), or metaseq "
                         "checkpoint directory or prefix (metaseq2engine)")
    convert.add_argument("--out", required=True, help="output directory")
    convert.add_argument("--tp", type=int, default=1,
                         help="tensor-parallel shards (hf2engine, metaseq2engine; default: "
                         "%(default)s)")
    convert.add_argument("--pp", type=int, default=1,
                         help="pipeline stages (hf2engine, metaseq2engine; default: "
                         "%(default)s)")
    convert.add_argument("--num-heads", type=int, default=None,
                         help="attention heads, for a metaseq checkpoint whose cfg lacks "
                         "decoder_attention_heads (metaseq2engine)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace a non-empty --out that is not a converted checkpoint")
    convert.set_defaults(func=cmd_convert)

    for verb, (_, help_text) in DELEGATED.items():
        verbs.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in DELEGATED:
            import importlib

            return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # Overrides may also follow the options (`train R --dry-run --gpus 8 a.b=1`).
        if extra and getattr(args, "overrides", None) is not None and all(
                "=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except OptimlError as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank has it: say it once
            print(f"optiml: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
