"""Kernel tests run the Triton kernels on CPU through Triton's interpreter when there is no GPU.

TRITON_INTERPRET is read when a kernel is decorated, so it is set here, before any test module
imports a kernel file. With a GPU it is left alone and the same tests run the compiled kernels.
Other test areas never pick Triton on a CPU (`auto` resolves to torch backends there), so the
variable does not change what they run.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
