import json

import pytest

from optiml_engine.data.tokenizer import ByteTokenizer, load_tokenizer
from optiml_engine.errors import OptimlError


def test_byte_tokenizer_round_trips_non_ascii():
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids == [b + 4 for b in "héllo".encode()]
    assert tok.decode([2] + ids + [1]) == "héllo"
    assert min(ids) >= 4 and max(ids) < tok.vocab_size


def test_gpt2_bpe_files_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer

    corpus = ["the quick brown fox jumps over the lazy dog", "Question: what is 2 + 2? Answer: 4"]
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(corpus * 20, vocab_size=400, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    trainer.save_model(str(tmp_path))
    assert json.loads((tmp_path / "vocab.json").read_text())["</s>"] == 2

    ours = load_tokenizer(str(tmp_path))
    ref = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in corpus + ["unseen wörds, the fox!"]:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
        assert ours.decode(ours.encode(text)) == text


def test_missing_tokenizer_is_a_user_error(tmp_path):
    with pytest.raises(OptimlError, match="data.tokenizer"):
        load_tokenizer(str(tmp_path / "nope"))
