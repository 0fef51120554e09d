"""`optiml convert hf2engine` / `engine2hf` round trip, and its user errors."""

import pytest
import torch

from optiml_engine.cli import main

transformers = pytest.importorskip("transformers")


def test_hf_to_engine_to_hf_keeps_the_logits(tmp_path):
    torch.manual_seed(0)
    ref = transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=32)).eval()
    ref.save_pretrained(tmp_path / "hf")
    assert main(["convert", "hf2engine", "--hf", str(tmp_path / "hf"),
                 "--out", str(tmp_path / "ckpt")]) == 0
    assert main(["convert", "engine2hf", "--ckpt", str(tmp_path / "ckpt"),
                 "--out", str(tmp_path / "back")]) == 0
    back = transformers.OPTForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(3, 120, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("argv, fragment", [
    (["convert", "engine2hf", "--ckpt", "{tmp}/absent", "--out", "{tmp}/o"],
     "absent: no complete checkpoint there"),
    (["convert", "hf2engine", "--hf", "{tmp}", "--out", "{tmp}/o"], "config.json: not found"),
])
def test_missing_inputs_exit_2_with_one_line(tmp_path, capsys, argv, fragment):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err


def tiny_hf(path, layers=2):
    torch.manual_seed(0)
    transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=layers, ffn_dim=64,
        num_attention_heads=4, max_position_embeddings=32)).save_pretrained(path)
    return path


def test_out_that_holds_other_files_is_refused_unless_overwrite(tmp_path, capsys):
    hf = tiny_hf(tmp_path / "hf")
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    for direction, src in (("hf2engine", ["--hf", str(hf)]), ("engine2hf", None)):
        if src is None:
            assert main(["convert", "hf2engine", "--hf", str(hf), "--out",
                         str(tmp_path / "ck")]) == 0
            src = ["--ckpt", str(tmp_path / "ck")]
        capsys.readouterr()
        assert main(["convert", direction, *src, "--out", str(precious)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a converted checkpoint" in err and "--overwrite" in err
        assert (precious / "notes.txt").read_text() == "keep me"
    # Its own output is replaced without asking; a foreign directory only with --overwrite.
    assert main(["convert", "hf2engine", "--hf", str(hf), "--out", str(tmp_path / "ck")]) == 0
    assert main(["convert", "engine2hf", "--ckpt", str(tmp_path / "ck"), "--out", str(precious),
                 "--overwrite"]) == 0
    assert not (precious / "notes.txt").exists() and (precious / "config.json").is_file()


def test_weights_the_config_does_not_declare_are_refused(tmp_path, capsys):
    import json

    hf = tiny_hf(tmp_path / "hf", layers=3)
    config = json.loads((hf / "config.json").read_text())
    config["num_hidden_layers"] = 2  # the weights hold a third layer
    (hf / "config.json").write_text(json.dumps(config))
    assert main(["convert", "hf2engine", "--hf", str(hf), "--out", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert "weights the config does not declare: model.decoder.layers.2." in err
    assert not (tmp_path / "ck").exists()


def test_tp2_in_one_process_writes_the_layout_independent_checkpoint(tmp_path, capsys):
    from optiml_engine.distributed.checkpoint import load_weights
    from optiml_engine.model import OPTForCausalLM

    hf = tiny_hf(tmp_path / "hf")
    assert main(["convert", "hf2engine", "--hf", str(hf), "--out", str(tmp_path / "tp2"),
                 "--tp", "2"]) == 0
    assert "one process for --tp 2 --pp 1" in capsys.readouterr().err
    want = OPTForCausalLM.from_hf(hf)
    got = OPTForCausalLM(want.config)
    load_weights(got, tmp_path / "tp2")
    for (name, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_engine2hf_says_the_step_and_copies_the_runs_tokenizer(tmp_path, capsys):
    import json

    from optiml_engine.distributed.checkpoint import save_weights
    from optiml_engine.model import OPTForCausalLM

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.json").write_text(json.dumps({"a": 0}))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    model = OPTForCausalLM.from_hf(tiny_hf(tmp_path / "hf"))
    save_weights(tmp_path / "ck" / "step_0000007", model,
                 {"step": 7, "recipe": {"data": {"tokenizer": str(tok)}}})
    assert main(["convert", "engine2hf", "--ckpt", str(tmp_path / "ck"), "--out",
                 str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "step_0000007 (step 7) with tokenizer files vocab.json, merges.txt" in err
    assert (tmp_path / "out" / "merges.txt").read_text() == "#version: 0.2\n"
