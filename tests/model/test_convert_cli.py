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
