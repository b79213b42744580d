"""Without CUDA, Triton kernels run under the Triton interpreter, which must be switched on before
``triton`` is first imported; with CUDA they are compiled, so the same tests check the GPU build."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
