"""The training objective's recipe keys, applied to packed samples (OPT-IML §3.1-3.2).

data.loss_on
  target    the loss covers each example's target and its closing `</s>` (the paper's choice)
  sequence  every next-token prediction inside an example: source and target (as the paper
            trains pre-training and dialogue data)
data.packing
  documents              examples packed into samples; attention never crosses an example
                         (the paper's choice: "attention never crosses an example")
  no_document_attention  packed as above, but every token attends to all earlier tokens of its
                         sample, other examples included; positions still restart per example,
                         so only the attention differs from `documents`
  padded                 one example per sample, the rest padding (no packing)
"""

from __future__ import annotations

import numpy as np

from optiml_engine.data.packing import EOS_ID, PAD_ID, PackedSamples, pack_examples

LOSS_ON = ("target", "sequence")
PACKING = ("documents", "no_document_attention", "padded")


def padding_positions(packed: PackedSamples, pad_id: int) -> np.ndarray:
    """True on padding: pad tokens at position 0 (an example starts with `</s>` at position 0,
    so no example token is taken for padding)."""
    return (packed.position_ids == 0) & (packed.tokens == pad_id)


def pack_for_objective(examples, seq_length: int, eos_id: int = EOS_ID, pad_id: int = PAD_ID,
                       loss_on: str = "target", packing: str = "documents") -> PackedSamples:
    if loss_on not in LOSS_ON or packing not in PACKING:
        raise ValueError(f"loss_on {loss_on!r} / packing {packing!r}: not among {LOSS_ON} / "
                         f"{PACKING}")
    packed = pack_examples(examples, seq_length, eos_id=eos_id, pad_id=pad_id,
                           one_per_sample=packing == "padded")
    pad = padding_positions(packed, pad_id)
    if loss_on == "sequence":
        # predicting token i + 1 from token i counts wherever both belong to one example
        within = np.zeros_like(pad)
        within[:, :-1] = (packed.doc_ids[:, :-1] == packed.doc_ids[:, 1:]) & ~pad[:, :-1]
        packed.loss_mask = np.maximum(packed.loss_mask, within.astype(np.float32))
    if packing == "no_document_attention":
        # one document per sample for the real tokens; padding keeps its own id
        packed.doc_ids = np.where(pad, packed.doc_ids, 0)
    return packed
