"""`optiml convert metaseq2engine`: a tiny OPT written in metaseq's released format (by
tests/model/metaseq_builder.py, from an HF OPT) imports with the logits of HF's OPT; pickles
that call code are refused before anything runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "parallel"))
import metaseq_builder as mb  # noqa: E402

from optiml_engine.cli import main  # noqa: E402
from optiml_engine.model.convert import load_engine_model  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    model = mb.hf_reference()
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits_match(ckpt: Path, hf_model) -> None:
    ids = torch.randint(3, mb.VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = load_engine_model(ckpt).eval()(ids)
        torch.testing.assert_close(got, hf_model(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fsdp_world, extra_pad", [(1, 3), (2, 0), (3, 2)])
def test_import_has_the_logits_of_hf_opt(tmp_path, reference, fsdp_world, extra_pad):
    hf_model, sd = reference
    src = mb.write_metaseq(tmp_path / "ms", sd, n_parts=2, fsdp_world=fsdp_world,
                           extra_pad=extra_pad)
    assert main(["convert", "metaseq2engine", "--ckpt", str(src), "--out",
                 str(tmp_path / "ck")]) == 0
    logits_match(tmp_path / "ck", hf_model)


def test_four_parts_into_tp2_in_one_process_and_a_prefix(tmp_path, reference, capsys):
    hf_model, sd = reference
    src = mb.write_metaseq(tmp_path / "ms", sd, n_parts=4)
    mb.write_metaseq(tmp_path / "ms", sd, n_parts=2, prefix="checkpoint_last.pt")
    assert main(["convert", "metaseq2engine", "--ckpt", str(src), "--out",
                 str(tmp_path / "ck")]) == 2
    assert "holds parts of several checkpoints: checkpoint_1_4000.pt, checkpoint_last.pt" in \
        capsys.readouterr().err
    assert main(["convert", "metaseq2engine", "--ckpt", str(src / "checkpoint_1_4000.pt"),
                 "--out", str(tmp_path / "ck"), "--tp", "2"]) == 0
    assert "one process for --tp 2 --pp 1" in capsys.readouterr().err
    logits_match(tmp_path / "ck", hf_model)
    from optiml_engine.model.metaseq import find_parts

    parts, prefix = find_parts(src / "checkpoint_last.pt-model_part-1.pt")
    assert prefix == "checkpoint_last.pt" and [[p.name for p in files] for files in parts] == [
        ["checkpoint_last.pt-model_part-0.pt"], ["checkpoint_last.pt-model_part-1.pt"]]


def hand_fused_qkv(sd: dict, layer: int, kind: str, heads: list[int]) -> torch.Tensor:
    """The engine's head-major rows [q_h; k_h; v_h] for each head h of `heads`, by hand."""
    d = mb.HIDDEN // mb.HEADS
    p = f"model.decoder.layers.{layer}.self_attn."
    rows = []
    for h in heads:
        for x in "qkv":
            rows.append(sd[f"{p}{x}_proj.{kind}"][h * d:(h + 1) * d])
    return torch.cat(rows)


@pytest.mark.parametrize("n_parts, tp", [(4, 2), (2, 2), (2, 4), (4, 1)])
def test_each_tp_rank_gets_its_heads_rows_and_columns(tmp_path, reference, n_parts, tp):
    from optiml_engine.config import ModelConfig, resolve_model_config
    from optiml_engine.model.metaseq import engine_names, find_parts, read_part
    from optiml_engine.model.metaseq_convert import local_weights, owned_parts

    _, sd = reference
    parts, _ = find_parts(mb.write_metaseq(tmp_path / "ms", sd, n_parts=n_parts))
    cfg = resolve_model_config(ModelConfig(
        vocab_size=mb.VOCAB, hidden_size=mb.HIDDEN, num_layers=mb.LAYERS, num_heads=mb.HEADS,
        ffn_hidden_size=mb.FFN, max_position_embeddings=mb.POSITIONS))
    per_rank = mb.HEADS // tp
    for rank in range(tp):
        indices, piece, pieces = owned_parts(n_parts, tp, rank)
        stream = ((i, engine_names(read_part(parts[i])[0], "x")) for i in indices)
        got = local_weights(stream, cfg, piece, pieces, tp, 0, 1, "test")
        want = {"decoder.embed_tokens.weight": sd["model.decoder.embed_tokens.weight"]
                .chunk(tp)[rank],
                "decoder.final_layer_norm.bias": sd["model.decoder.final_layer_norm.bias"]}
        for i in range(mb.LAYERS):
            p = f"decoder.layers.{i}."
            for kind in ("weight", "bias"):
                want[f"{p}self_attn.qkv_proj.{kind}"] = hand_fused_qkv(
                    sd, i, kind, list(range(rank * per_rank, (rank + 1) * per_rank)))
                want[f"{p}fc1.{kind}"] = sd[f"model.{p}fc1.{kind}"].chunk(tp)[rank]
            want[f"{p}fc2.weight"] = sd[f"model.{p}fc2.weight"].chunk(tp, 1)[rank]
            want[f"{p}self_attn.out_proj.weight"] = \
                sd[f"model.{p}self_attn.out_proj.weight"].chunk(tp, 1)[rank]
            want[f"{p}self_attn.out_proj.bias"] = sd[f"model.{p}self_attn.out_proj.bias"]
        for name, value in want.items():
            torch.testing.assert_close(got[name][0], value, rtol=0, atol=0,
                                       msg=f"rank {rank} {name}")


def test_part_to_rank_mapping():
    from optiml_engine.errors import OptimlError
    from optiml_engine.model.metaseq_convert import owned_parts

    # The 16-part 175B release into TP8: rank r reads parts 2r and 2r + 1.
    assert [owned_parts(16, 8, r)[0] for r in range(8)] == [[2 * r, 2 * r + 1]
                                                            for r in range(8)]
    assert owned_parts(2, 2, 1) == ([1], 0, 1)
    assert owned_parts(2, 8, 5) == ([1], 1, 4)
    with pytest.raises(OptimlError, match="choose a --tp that divides 6 or is a multiple"):
        owned_parts(6, 4, 0)


class Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return (self.call, (self.arg,))


@pytest.mark.parametrize("call, arg, named", [
    (os.system, "echo pwned > pwned.txt", "posix.system"),
    (eval, "open('pwned.txt', 'w').write('pwned')", "builtins.eval"),
])
def test_a_pickle_that_calls_code_is_refused_and_never_run(tmp_path, reference, capsys,
                                                           monkeypatch, call, arg, named):
    monkeypatch.chdir(tmp_path)
    src = mb.write_metaseq(tmp_path / "ms", reference[1], n_parts=2)
    part = src / "checkpoint_1_4000.pt-model_part-1.pt"
    with mb.fake_omegaconf():  # our own file: its omegaconf stand-ins importable again
        saved = torch.load(part, weights_only=False)
    saved["cfg"] = {"model": Evil(call, arg)}
    torch.save(saved, part)
    assert main(["convert", "metaseq2engine", "--ckpt", str(src), "--out",
                 str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{part}: refused: the pickle calls {named}, which a checkpoint never needs" in err
    assert not (tmp_path / "pwned.txt").exists()
    assert not (tmp_path / "ck").exists()


def test_bad_checkpoints_are_one_line(tmp_path, reference, capsys):
    src = mb.write_metaseq(tmp_path / "ms", reference[1], n_parts=2,
                           model_cfg={**mb.MODEL_CFG, "decoder_ffn_embed_dim": 48})
    assert main(["convert", "metaseq2engine", "--ckpt", str(src), "--out",
                 str(tmp_path / "ck")]) == 2
    assert "cfg.model.decoder_ffn_embed_dim: 48, but the weights have 64" in \
        capsys.readouterr().err
    cfg = {k: v for k, v in mb.MODEL_CFG.items() if k != "decoder_attention_heads"}
    src = mb.write_metaseq(tmp_path / "noheads", reference[1], n_parts=2, model_cfg=cfg)
    assert main(["convert", "metaseq2engine", "--ckpt", str(src), "--out",
                 str(tmp_path / "ck")]) == 2
    assert "decoder_attention_heads: missing (pass --num-heads N)" in capsys.readouterr().err
    assert main(["convert", "metaseq2engine", "--ckpt", str(src), "--out",
                 str(tmp_path / "ck"), "--num-heads", "4"]) == 0
    (src / "checkpoint_1_4000.pt-model_part-0.pt").unlink()
    assert main(["convert", "metaseq2engine", "--ckpt", str(src), "--out",
                 str(tmp_path / "ck2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "parts [1] of checkpoint_1_4000.pt are not 0..0" in err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_each_read_only_their_parts(tmp_path, reference):
    import harness

    hf_model, sd = reference
    src = mb.write_metaseq(tmp_path / "ms", sd, n_parts=4, fsdp_world=2)
    harness.spawn(mb.convert_worker, 2, str(src), str(tmp_path / "ck"), 2, 1)
    logits_match(tmp_path / "ck", hf_model)
    reads = [(tmp_path / "ck" / f"reads-{r}.txt").read_text().split() for r in range(2)]
    # Rank r unflattens only its own parts 2r and 2r + 1 (the config comes from part 0's
    # shard_metadata, without reading its tensors).
    assert reads == [["0", "1"], ["2", "3"]]


def rewrite(part: Path, change) -> None:
    """Load one of our own part files, change it, save it back (its stand-ins importable)."""
    with mb.fake_omegaconf():
        saved = torch.load(part, weights_only=False)
        change(saved)
        torch.save(saved, part)


def test_inconsistent_parts_are_refused(tmp_path, reference, capsys):
    src = mb.write_metaseq(tmp_path / "ms", reference[1], n_parts=2)
    part1 = src / "checkpoint_1_4000.pt-model_part-1.pt"

    def wrong_padding(saved):
        saved["shard_metadata"]["param_metadata"][1]["params"]["flat_param_0"]["padding"] = 5

    rewrite(part1, wrong_padding)
    assert main(["convert", "metaseq2engine", "--ckpt", str(src), "--out",
                 str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert f"{part1}: shard_metadata does not match the flat parameters (ValueError: " \
        "decoder.layers.0.flat_param_0:" in err

    src = mb.write_metaseq(tmp_path / "ms2", reference[1], n_parts=2, extra_pad=0)
    part1 = src / "checkpoint_1_4000.pt-model_part-1.pt"

    def other_positions(saved):  # the root flat parameter: embed_tokens rows, then positions
        flat = saved["model"]["flat_param_0"]
        start = mb.VOCAB // 2 * mb.HIDDEN
        flat[start:start + 4] += 1.0

    rewrite(part1, other_positions)
    assert main(["convert", "metaseq2engine", "--ckpt", str(src), "--out",
                 str(tmp_path / "ck")]) == 2
    assert "decoder.embed_positions.weight differs between parts 0 and 1, though every part " \
        "holds all of it" in capsys.readouterr().err
