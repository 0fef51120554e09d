"""Evaluation throughput: examples per second of the engine's rank classification and greedy
generation against a plain `transformers` loop on the same random OPT, in one run.

    python tools/bench_eval.py [--hidden 256 --layers 4 --prompts 32 --new-tokens 32 ...]

Rank classification: the engine scores a batch of prompts with all their options, each prompt run
once (its KV cache shared by its options); the baseline runs `prompt + option` through
`transformers.OPTForCausalLM` once per option (the usual loop). Generation: the engine's batched,
left-padded greedy decoding with a KV cache against `generate(do_sample=False)` one prompt at a
time, and batched with left padding. Every path produces exactly `--new-tokens` tokens (end of
sequence disabled), so the work is the same.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optiml_engine.eval.generate import greedy_generate  # noqa: E402
from optiml_engine.eval.scoring import score_options  # noqa: E402
from optiml_engine.model import OPTForCausalLM  # noqa: E402


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _workload(args, g):
    rand = lambda n: torch.randint(4, args.vocab, (n,), generator=g).tolist()
    prompts = [[2, *rand(int(torch.randint(args.prompt_len // 2, args.prompt_len + 1, (1,),
                                            generator=g)))] for _ in range(args.prompts)]
    options = [[rand(int(torch.randint(1, args.option_len + 1, (1,), generator=g)))
                for _ in range(args.options)] for _ in range(args.prompts)]
    return prompts, options


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=50272)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--options", type=int, default=4)
    p.add_argument("--option-len", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)

    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                                 num_hidden_layers=args.layers, ffn_dim=4 * args.hidden,
                                 num_attention_heads=args.heads, max_position_embeddings=512,
                                 dropout=0.0, attention_dropout=0.0)
    hf = transformers.OPTForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = OPTForCausalLM.from_hf(tmp).eval()
    prompts, options = _workload(args, torch.Generator().manual_seed(1))
    bs, n = args.batch_size, args.prompts

    @torch.no_grad()
    def hf_rank():
        for prompt, opts in zip(prompts, options, strict=True):
            for opt in opts:
                logp = torch.log_softmax(hf(torch.tensor([prompt + opt])).logits[0].float(), -1)
                sum(float(logp[len(prompt) + j - 1, t]) for j, t in enumerate(opt))

    def our_rank():
        for i in range(0, n, bs):
            score_options(ours, prompts[i:i + bs], options[i:i + bs])

    new = args.new_tokens

    @torch.no_grad()
    def hf_generate_loop():
        for prompt in prompts:
            hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=new,
                        min_new_tokens=new, pad_token_id=1)

    @torch.no_grad()
    def hf_generate_batched():
        for i in range(0, n, bs):
            chunk = prompts[i:i + bs]
            width = max(map(len, chunk))
            ids = torch.tensor([[1] * (width - len(q)) + q for q in chunk])
            mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in chunk])
            hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new,
                        min_new_tokens=new, pad_token_id=1)

    def our_generate():
        for i in range(0, n, bs):
            greedy_generate(ours, prompts[i:i + bs], new, eos_id=-1)

    rows = {}
    for name, fn in [("rank: transformers, one forward per option", hf_rank),
                     ("rank: engine, batched, prompt shared by its options", our_rank),
                     ("generate: transformers generate, one prompt at a time", hf_generate_loop),
                     ("generate: transformers generate, batched left-padded",
                      hf_generate_batched),
                     ("generate: engine greedy_generate, batched left-padded", our_generate)]:
        seconds = _timed(fn, args.repeats)
        rows[name] = n / seconds
        print(f"{name:58s} {n / seconds:8.2f} examples/s", flush=True)
    names = list(rows)
    ratios = {"rank (engine / transformers loop)": rows[names[1]] / rows[names[0]],
              "generate (engine / transformers per-prompt loop)": rows[names[4]] / rows[names[2]],
              "generate (engine / transformers batched)": rows[names[4]] / rows[names[3]]}
    for name, r in ratios.items():
        print(f"{name:58s} {r:8.2f}x")
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, " \
              f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"machine: {machine}; config: {vars(args)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"examples_per_s": rows, "ratios": ratios,
                                               "machine": machine, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
