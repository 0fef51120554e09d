"""Backend resolution and the packed-row bookkeeping (no kernels run here)."""

import logging

import pytest
import torch

from optiml_engine.config import KernelsConfig
from optiml_engine.errors import OptimlError
from optiml_engine.kernels import dispatch
from optiml_engine.kernels.segments import (
    cu_seqlens_to_doc_ids,
    doc_ids_to_cu_seqlens,
    segment_bounds,
)


def test_segment_bounds_by_hand():
    doc_ids = torch.tensor([[0, 0, 0, 1, 2, 2, 9, 9], [4, 4, 4, 4, 4, 5, 5, 5]])
    start, end = segment_bounds(doc_ids)
    assert start.tolist() == [[0, 0, 0, 3, 4, 4, 6, 6], [0, 0, 0, 0, 0, 5, 5, 5]]
    assert end.tolist() == [[2, 2, 2, 3, 5, 5, 7, 7], [4, 4, 4, 4, 4, 7, 7, 7]]
    assert start.dtype == end.dtype == torch.int32


def test_cu_seqlens_round_trip():
    doc_ids = cu_seqlens_to_doc_ids(torch.tensor([0, 3, 4, 9]), seq_len=11)
    assert doc_ids.tolist() == [[0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3]]
    cu, longest = doc_ids_to_cu_seqlens(torch.cat([doc_ids, doc_ids]))
    assert cu.tolist() == [0, 3, 4, 9, 11, 14, 15, 20, 22] and longest == 5


def test_auto_on_cpu_picks_the_torch_backends(caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_logged", set())
    with caplog.at_level(logging.INFO, logger="optiml_engine.kernels"):
        chosen = dispatch.resolve_all(KernelsConfig(), "cpu")
        dispatch.resolve_all(KernelsConfig(), "cpu")
    assert chosen == {"attention": "segments", "cross_entropy": "torch", "adamw": "torch_fused"}
    assert len(caplog.records) == 3  # each choice logged once, not once per call


@pytest.mark.parametrize("kernel,backend", [("attention", "flash_attn"), ("adamw", "cuda"),
                                            ("adamw", "apex")])
def test_forcing_a_gpu_backend_on_cpu_is_a_user_error(kernel, backend):
    with pytest.raises(OptimlError, match=f"kernels.{kernel}"):
        dispatch.resolve(kernel, backend, "cpu")


def test_unknown_backend_names_the_choices():
    with pytest.raises(OptimlError, match="auto, triton, torch"):
        dispatch.resolve("cross_entropy", "liger", "cpu")
