"""Sharded `pytorch_model.bin.index.json` directories load (from_hf, hf2engine, HFInit), and
HFInit reads a rank's slices one tensor at a time, straight in the parameters' dtype."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from optiml_engine.cli import main  # noqa: E402
from optiml_engine.model import OPTForCausalLM  # noqa: E402


def tiny_hf_model():
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=80, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=32, dropout=0.0)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def write_sharded_bin(model, path, files: int = 3):
    """The legacy sharded layout of transformers: pytorch_model-0000i-of-0000n.bin files and an
    index mapping each tensor to its file."""
    path.mkdir(parents=True)
    model.config.save_pretrained(path)
    state = model.state_dict()
    names = list(state)
    weight_map = {}
    for i in range(files):
        file = f"pytorch_model-{i + 1:05d}-of-{files:05d}.bin"
        chunk = names[i * len(names) // files:(i + 1) * len(names) // files]
        torch.save({k: state[k].clone() for k in chunk}, path / file)
        weight_map.update(dict.fromkeys(chunk, file))
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(t.numel() * 4 for t in state.values())},
         "weight_map": weight_map}))
    return path


def test_sharded_bin_directory_loads_and_converts(tmp_path):
    ref = tiny_hf_model()
    hf = write_sharded_bin(ref, tmp_path / "hf")
    ids = torch.randint(3, 80, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(ids).logits
        torch.testing.assert_close(OPTForCausalLM.from_hf(hf).eval()(ids), want,
                                   rtol=1e-5, atol=1e-5)
        assert main(["convert", "hf2engine", "--hf", str(hf), "--out",
                     str(tmp_path / "ck")]) == 0
        from optiml_engine.model.convert import load_engine_model

        torch.testing.assert_close(load_engine_model(tmp_path / "ck").eval()(ids), want,
                                   rtol=1e-5, atol=1e-5)


def test_sharded_bin_index_naming_a_missing_file(tmp_path, capsys):
    hf = write_sharded_bin(tiny_hf_model(), tmp_path / "hf")
    (hf / "pytorch_model-00002-of-00003.bin").unlink()
    assert main(["convert", "hf2engine", "--hf", str(hf), "--out", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert err == (f"optiml: error: {hf / 'pytorch_model-00002-of-00003.bin'}: not found (named "
                   "by pytorch_model.bin.index.json) (re-download or re-export the checkpoint)\n")


@pytest.mark.parametrize("layout", ["safetensors", "sharded_bin"])
def test_hfinit_reads_one_slice_at_a_time_in_the_parameters_dtype(tmp_path, monkeypatch,
                                                                  layout):
    from optiml_engine.distributed.state import ParallelGrid
    from optiml_engine.model.hf_shards import _Reader
    from optiml_engine.model.meta_init import hf_meta_model, materialize

    ref = tiny_hf_model().half()  # stored in fp16, as the released weights are
    if layout == "safetensors":
        ref.save_pretrained(tmp_path / "hf")
    else:
        write_sharded_bin(ref, tmp_path / "hf")
    model, source = hf_meta_model(tmp_path / "hf", 0.0)
    model.to(torch.bfloat16)  # the parameters' dtype (still on the meta device)

    reads, original = [], _Reader.read

    def spy(self, name, *args, **kwargs):
        t = original(self, name, *args, **kwargs)
        reads.append((name, t.dtype))
        return t

    monkeypatch.setattr(_Reader, "read", spy)
    per_call = []

    def counted(name, param, grid, stats):
        before = len(reads)
        value = source(name, param, grid, stats)
        per_call.append((name, len(reads) - before, value.dtype))
        return value

    materialize(model, counted, ParallelGrid())
    # Each parameter is read when it is materialised: q, k and v for a fused qkv, else one.
    assert [n for _, n, _ in per_call] == [3 if "qkv" in name else 1 for name, _, _ in per_call]
    assert {dtype for _, dtype in reads} == {torch.bfloat16}
    assert {dtype for *_, dtype in per_call} == {torch.bfloat16}
    hf = ref.state_dict()
    for name, p in model.named_parameters():
        if "qkv" not in name:
            torch.testing.assert_close(p, hf[f"model.{name}"].to(torch.bfloat16), rtol=0,
                                       atol=0, msg=name)
    q = hf["model.decoder.layers.1.self_attn.q_proj.weight"][:8].to(torch.bfloat16)
    torch.testing.assert_close(model.decoder.layers[1].self_attn.qkv_proj.weight[:8], q,
                               rtol=0, atol=0)  # head 0's q rows lead the head-major layout
