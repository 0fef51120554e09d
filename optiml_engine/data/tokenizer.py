"""Tokenizers with OPT's conventions: <s>=0, <pad>=1, </s>=2 (bos = eos = 2 in use), <unk>=3.

`encode` adds no special tokens: the packer writes `</s> src tgt </s>` itself.
- `byte`: one token per UTF-8 byte (ids 4..259), needs no files; used by the demo.
- a `tokenizer.json`, or a directory holding one or `vocab.json` + `merges.txt` (GPT-2 BPE, as
  OPT ships): read by Hugging Face `tokenizers`.
"""

from __future__ import annotations

from pathlib import Path

from optiml_engine.errors import OptimlError, read_text

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 2, 1, 2, 3


class ByteTokenizer:
    offset = 4
    vocab_size = 260
    bos_id, pad_id, eos_id, unk_id = BOS_ID, PAD_ID, EOS_ID, UNK_ID

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    bos_id, pad_id, eos_id, unk_id = BOS_ID, PAD_ID, EOS_ID, UNK_ID

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _gpt2_bpe(vocab: Path, merges: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    for file in (vocab, merges):
        read_text(file)  # unreadable or not UTF-8: one line naming the file
    try:
        model = models.BPE.from_file(str(vocab), str(merges))
    except Exception as err:  # tokenizers raises plain Exceptions
        raise OptimlError(f"{vocab.parent}", f"vocab.json + merges.txt are not a BPE "
                          f"vocabulary ({err})", FIX) from None
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    for special in ("<s>", "<pad>", "</s>", "<unk>"):
        if tok.token_to_id(special) is not None:
            tok.add_special_tokens([special])
    return tok


def _tokenizer_json(path: Path):
    from tokenizers import Tokenizer

    text = read_text(path)
    try:
        return Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises plain Exceptions
        what = "truncated" if "EOF while parsing" in str(err) else "not a valid tokenizer.json"
        raise OptimlError(str(path), f"{what} ({err})", FIX) from None


def load_tokenizer(spec: str):
    """`byte`, a tokenizer.json, or a directory with tokenizer.json or vocab.json + merges.txt."""
    if spec == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if path.is_file():
        return HFTokenizer(_tokenizer_json(path))
    if path.is_dir() and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return HFTokenizer(_gpt2_bpe(path / "vocab.json", path / "merges.txt"))
    raise OptimlError(f"data.tokenizer: {spec}", "no tokenizer found there", FIX)


FIX = "use 'byte', a tokenizer.json, or a directory with vocab.json + merges.txt"
